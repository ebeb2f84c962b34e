// Reading CRIU's log after a failed dump or restore: which line says what went wrong, and what
// the user is told (docs/engines.md, "What a CRIU log says").

import { promises as fs } from 'node:fs';

import { EngineError } from './engine';
import { killedBy, messageErrorCode } from './tools';

/**
 * Error lines CRIU writes on every run here, whatever happens: they say nothing of a failure.
 * (CRIU tries to raise its own fd limit; in a container without CAP_SYS_RESOURCE it may not.)
 */
const HARMLESS = [/rlimit: Can't setup RLIMIT_NOFILE/];

/** CRIU's closing summary of a failure: true, but never the cause. */
const SUMMARY = /\b(Dumping|Restoring) FAILED\b/;

/** "(00.021410)      1: Error (criu/files-reg.c:2175): File x has bad size" -> "File x has bad size" */
function errorText(line: string): string {
  return line.replace(/^.*?\bError \([^)]*\):\s*/, '').trim();
}

/** The error lines of a CRIU log that may say why it failed, in order, without harmless ones. */
export function realErrors(log: string): string[] {
  return log
    .split('\n')
    .filter(line => /\bError \(/.test(line) && !HARMLESS.some(harmless => harmless.test(line)))
    .map(errorText)
    .filter(text => text && !SUMMARY.test(text));
}

/** The last lines of a log, for the error's detail when it names no error. */
function lastLines(log: string, count = 6): string {
  return log
    .split('\n')
    .filter(line => line.trim() && !HARMLESS.some(harmless => harmless.test(line)))
    .slice(-count)
    .join('\n');
}

export interface CriuEnd {
  /** The signal that killed CRIU, if one did. */
  signal?: NodeJS.Signals | null;
  /** Whether the engine killed it for taking too long (with this many seconds). */
  timedOutAfterS?: number;
  /** How it ended otherwise, when its log says nothing (a tool's or a shell's message). */
  message?: string;
}

/**
 * The error to report for a CRIU run that failed to `what` ("snapshot the kernel"), from its log
 * and how it ended: killed by a signal says so first; a full disk or a refusal is told by its
 * code; otherwise the log's first real error.
 */
export function criuFailure(log: string, end: CriuEnd, what: string): EngineError {
  const errors = realErrors(log);
  const first = errors[0];
  const detail = (errors.length ? errors.slice(0, 12).join('\n') : lastLines(log)) || undefined;
  if (end.timedOutAfterS !== undefined) {
    const said = first ? `; the first error in its log: ${first}` : '';
    return new EngineError(
      'engine_failed',
      `CRIU did not ${what} within ${end.timedOutAfterS} s and was stopped${said}.`,
      detail
    );
  }
  const killed = killedBy(end.signal);
  if (killed) {
    const said = first ? `; the first error in its log: ${first}` : '';
    return new EngineError(
      'engine_failed',
      `CRIU was ${killed} while trying to ${what}${said}.`,
      detail
    );
  }
  const code = messageErrorCode(errors.join('\n'));
  if (code === 'no_space') {
    return new EngineError(
      'no_space',
      `The disk is full: CRIU could not ${what} (${first}).`,
      detail
    );
  }
  if (code === 'permission_denied') {
    return new EngineError(
      'permission_denied',
      `CRIU was not permitted to ${what}: ${first}.`,
      detail
    );
  }
  const reason = first ?? end.message?.trim() ?? 'CRIU gave no reason';
  return new EngineError('engine_failed', `CRIU could not ${what}: ${reason}`, detail);
}

/** Reads a CRIU log; empty when there is none. */
export function readLog(logFile: string): Promise<string> {
  return fs.readFile(logFile, 'utf8').catch(() => '');
}

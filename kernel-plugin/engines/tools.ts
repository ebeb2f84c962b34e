// What every engine does with command-line tools: find them, run them so that they die with the
// supervisor, collect what they print, and turn how they failed into the protocol's error codes.

import { spawn, type ChildProcess } from 'node:child_process';
import { constants as fsConstants, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { EngineError } from './engine';

/**
 * Prefix for any argv an engine starts: the process gets SIGKILL when its parent dies, however it
 * dies (kill -9 included). PR_SET_PDEATHSIG survives execve but not fork, so every level of a
 * process tree needs it (docs/engines.md, "Nothing outlives the supervisor").
 */
export const DIES_WITH_PARENT = ['setpriv', '--pdeathsig', 'KILL'] as const;

/** The util-linux tools the engines run (`setpriv` for DIES_WITH_PARENT). */
export const UTIL_LINUX_TOOLS = ['setpriv'] as const;

/** `argv`, run so that it dies with its parent. */
export function diesWithParent(argv: readonly string[]): string[] {
  return [...DIES_WITH_PARENT, ...argv];
}

/**
 * The script that, run under DIES_WITH_PARENT, becomes the command ("$@" after the parent's PID,
 * "$1") only if that parent is still its parent: one that died between the fork and setpriv's
 * prctl sends no signal, and the child, re-parented, would run on for good (seen: a restore's
 * gate shell and `cat` under PID 1 after kill -9 of the supervisor 30 ms into a restore). Once
 * the signal is set, a parent that dies later kills it.
 */
export const ONLY_UNDER_PARENT = '[ "$PPID" = "$1" ] || exit 137; shift; exec "$@"';

/**
 * `argv`, run so that it dies with its parent `parentPid` (the process that spawns it), even when
 * that parent dies while it starts (ONLY_UNDER_PARENT; ~1 ms more for the shell).
 */
export function diesWithParentSurely(argv: readonly string[], parentPid: string): string[] {
  return [...DIES_WITH_PARENT, '/bin/sh', '-c', ONLY_UNDER_PARENT, 'sh', parentPid, ...argv];
}

/** Whether `file` is an executable regular file. */
export async function isExecutable(file: string): Promise<boolean> {
  try {
    await fs.access(file, fsConstants.X_OK);
    return (await fs.stat(file)).isFile();
  } catch {
    return false;
  }
}

/** `which`: the first executable `name` in `dirs` (default: the PATH of `env`), or null. */
export async function findExecutable(
  name: string,
  env: NodeJS.ProcessEnv,
  dirs: string[] = (env.PATH ?? '').split(path.delimiter).filter(Boolean)
): Promise<string | null> {
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    if (await isExecutable(candidate)) {
      return candidate;
    }
  }
  return null;
}

/** The first of `tools` that is not on the PATH of `env`, or null when all are. */
export async function firstMissing(
  tools: readonly string[],
  env: NodeJS.ProcessEnv
): Promise<string | null> {
  for (const tool of tools) {
    if (!(await findExecutable(tool, env))) {
      return tool;
    }
  }
  return null;
}

export interface ToolResult {
  /** Exit code, or null when the tool was killed by a signal or could not start. */
  code: number | null;
  /** The signal that killed it, if one did. */
  signal: NodeJS.Signals | null;
  /** Whether it was killed for running longer than `timeoutMs` (then `signal` is SIGKILL). */
  timedOut: boolean;
  stdout: string;
  stderr: string;
  /** Why it could not start, or why it failed (non-zero exit, timeout). */
  error?: Error;
}

/** How long a tool's output pipes may stay open after it exited, before its group is killed. */
const PIPES_GRACE_MS = 200;

/**
 * Runs a tool to its end (DIES_WITH_PARENT: it never outlives the supervisor). Never rejects:
 * the result says how it ended.
 *
 * The tool leads a process group of its own, and its end is its exit, not the end of its
 * output: a `criu dump` killed mid-dump can leave a forked copy of itself stopped under PID 1,
 * holding the tool's pipes (docs/engines.md, "Nothing outlives the supervisor"). Output that
 * stays open PIPES_GRACE_MS after the exit is such a copy's: then the group is killed, and the
 * result comes.
 */
export function runTool(
  file: string,
  args: string[],
  options: { env: NodeJS.ProcessEnv; timeoutMs: number }
): Promise<ToolResult> {
  const [wrapper, ...rest] = diesWithParent([file, ...args]);
  return new Promise(resolve => {
    const child = spawn(wrapper, rest, {
      env: options.env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe']
    });
    const output = { stdout: '', stderr: '' };
    for (const name of ['stdout', 'stderr'] as const) {
      child[name].setEncoding('utf8');
      child[name].on('data', (chunk: string) => {
        if (output[name].length < TOOL_OUTPUT_LIMIT) {
          output[name] += chunk;
        }
      });
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
    }, options.timeoutMs);
    const closed = new Promise<void>(done => child.once('close', () => done()));
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      const grace = new Promise<'open'>(done =>
        setTimeout(() => done('open'), PIPES_GRACE_MS).unref()
      );
      void Promise.race([closed, grace]).then(pipes => {
        if (pipes === 'open') {
          // What of its group holds its pipes is a copy of it, stopped: the tool is over. (Not
          // otherwise: helpers of a killed dump that closed them may still be tidying up.)
          killGroup(child.pid);
        }
        child.stdout.destroy();
        child.stderr.destroy();
        const failed = code !== 0 || signal !== null;
        resolve({
          code: signal ? null : code,
          signal,
          timedOut,
          ...output,
          error: failed
            ? new Error(
                `${file} ${signal ? killedBy(signal) : `exited with code ${code}`}${timedOut ? ` after ${options.timeoutMs} ms` : ''}`
              )
            : undefined
        });
      });
    });
    // A tool that could not start never exits.
    child.once('error', error => {
      if (child.pid === undefined) {
        clearTimeout(timer);
        resolve({ code: null, signal: null, timedOut: false, stdout: '', stderr: '', error });
      }
    });
  });
}

/** The first bytes of a tool's stdout and stderr that are kept (each). */
const TOOL_OUTPUT_LIMIT = 1 << 20;

/** SIGKILL to process group `pgid` (a tool's: it leads its own); nothing if it is gone. */
function killGroup(pgid: number | undefined): void {
  if (pgid) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // Gone.
    }
  }
}

/** "killed by signal 9 (SIGKILL)", or null when the tool was not killed by a signal. */
export function killedBy(signal: NodeJS.Signals | null | undefined): string | null {
  if (!signal) {
    return null;
  }
  const number = os.constants.signals[signal];
  return `killed by signal ${number ?? '?'} (${signal})`;
}

/** The first `limit` characters a child prints on stdout and stderr, for error messages. */
export class OutputCollector {
  private collected = '';
  private readonly children: ChildProcess[] = [];
  private readonly collect = (chunk: Buffer) => {
    if (this.collected.length < this.limit) {
      this.collected += chunk.toString();
    }
  };

  constructor(private readonly limit = 8192) {}

  attach(child: ChildProcess): this {
    this.children.push(child);
    child.stdout?.on('data', this.collect);
    child.stderr?.on('data', this.collect);
    return this;
  }

  /** Stops collecting (the output is the kernel's from now on). */
  detach(): void {
    for (const child of this.children) {
      child.stdout?.off('data', this.collect);
      child.stderr?.off('data', this.collect);
    }
  }

  get text(): string {
    return this.collected;
  }
}

/** The protocol's error code for a file-system errno, or null when it maps onto none. */
export function errnoErrorCode(
  errno: string | undefined
): Extract<EngineError['code'], 'no_space' | 'permission_denied'> | null {
  switch (errno) {
    case 'ENOSPC':
    case 'EDQUOT':
      return 'no_space';
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return 'permission_denied';
    default:
      return null;
  }
}

/** The same, read from a tool's message ("No space left on device", "Permission denied"). */
export function messageErrorCode(
  text: string
): Extract<EngineError['code'], 'no_space' | 'permission_denied'> | null {
  if (/No space left on device|ENOSPC|Disk quota exceeded|EDQUOT/i.test(text)) {
    return 'no_space';
  }
  if (
    /Permission denied|Operation not permitted|Read-only file system|EACCES|EPERM|EROFS/.test(text)
  ) {
    return 'permission_denied';
  }
  return null;
}

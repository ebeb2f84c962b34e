// What every engine does with command-line tools: find them, run them so that they die with the
// supervisor, collect what they print, and turn how they failed into the protocol's error codes.

import { execFile, type ChildProcess } from 'node:child_process';
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

/**
 * Runs a tool to its end (DIES_WITH_PARENT: it never outlives the supervisor). Never rejects:
 * the result says how it ended.
 */
export function runTool(
  file: string,
  args: string[],
  options: { env: NodeJS.ProcessEnv; timeoutMs: number }
): Promise<ToolResult> {
  const [wrapper, ...rest] = diesWithParent([file, ...args]);
  return new Promise(resolve => {
    execFile(
      wrapper,
      rest,
      { env: options.env, timeout: options.timeoutMs, killSignal: 'SIGKILL', maxBuffer: 1 << 20 },
      (error, stdout, stderr) => {
        const failure = error as
          (Error & { code?: unknown; signal?: NodeJS.Signals; killed?: boolean }) | null;
        resolve({
          code: failure ? (typeof failure.code === 'number' ? failure.code : null) : 0,
          signal: failure?.signal ?? null,
          timedOut: failure?.killed === true && failure.signal === 'SIGKILL',
          stdout: String(stdout),
          stderr: String(stderr),
          error: failure ?? undefined
        });
      }
    );
  });
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

// Starting and watching kernel processes for engines.
//
// Why a shell pipeline: Node (libuv) gives a child's stdio as socketpairs, and a kernel holding a
// stream unix socket connected to a process outside its image cannot be snapshotted. So the
// kernel's stdout and stderr are made a real pipe by `sh -c '"$@" 2>&1 | cat'`, and `cat` hands
// the output on to the supervisor's log. The engine's own launcher (unshare, criu restore) is the
// shell's child; the kernel is the launcher's child. The shell, the launcher and `cat` each die
// with their parent (DIES_WITH_PARENT); the engine makes the kernel die with the launcher.

import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs, readdirSync, readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

import type { KernelExit, KernelProcess } from './engine';
import { diesWithParentSurely, OutputCollector } from './tools';

/** The pipeline's two processes die with its shell, even one that dies while they start. */
const DIES = diesWithParentSurely([], '$$')
  .map(word => (word.includes(' ') ? `'${word}'` : word))
  .join(' ');
const PIPELINE = `${DIES} "$@" 2>&1 | ${DIES} cat`;
/** The same, with the pipe also on fd 3 (CRIU cannot hand its own fd 1 to a restored task). */
const PIPELINE_WITH_FD3 = `${DIES} "$@" 2>&1 3>&1 | ${DIES} cat`;

/** PIDs of the direct children of `pid` (from /proc; empty when it is gone). */
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

export function commandName(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

/**
 * The fields of `/proc/PID/stat` after the command name (which may hold spaces and parentheses):
 * [0] is the state (field 3), [6] the task flags (field 9); null once `pid` is gone.
 */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** True while `pid` exists and is not a zombie. */
export function isRunning(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state !== undefined && state !== 'Z' && state !== 'X';
}

/** The kernel's PF_EXITING task flag (include/linux/sched.h): set once a task is in do_exit. */
const PF_EXITING = 0x4;

/**
 * True while `pid` runs and is not on its way out: a task already in its exit, but stuck there
 * (an init of a PID namespace waits in zap_pid_ns_processes until the tasks of its namespace are
 * gone, which may be never while CRIU traces one of them), reads as sleeping, not as a zombie.
 */
export function isRunningOn(pid: number): boolean {
  const fields = statFields(pid);
  return (
    fields !== null &&
    fields[0] !== 'Z' &&
    fields[0] !== 'X' &&
    (Number(fields[6]) & PF_EXITING) === 0
  );
}

/**
 * True once `pid` has let go of every file (fds, and with them its sockets and locks): it has
 * exited, as a zombie not yet reaped, or is gone. A zombie leader with threads still exiting still
 * lists its fds, so this is stricter than `!isRunning`.
 */
function holdsNoFiles(pid: number): boolean {
  try {
    return !isRunning(pid) && readdirSync(`/proc/${pid}/fd`).length === 0;
  } catch {
    return true;
  }
}

/** Adds every process below `pid` (children, theirs, ...) to `found`. */
function addDescendants(pid: number, found: Set<number>): void {
  for (const child of childrenOf(pid)) {
    found.add(child);
    addDescendants(child, found);
  }
}

/** The first running process `depth` levels below `pid` (1: a child), following the first. */
export function runningDescendant(pid: number, depth: number): number | undefined {
  let found: number | undefined = pid;
  for (let level = 0; level < depth && found; level++) {
    found = childrenOf(found).find(isRunning);
  }
  return found;
}

/** Waits until `find` returns a PID, polling; throws after `timeoutMs`. */
export async function waitForPid(
  find: () => number | undefined,
  timeoutMs: number,
  what: string,
  stillHoping: () => boolean = () => true
): Promise<number> {
  const started = Date.now();
  const deadline = started + timeoutMs;
  // Every millisecond at first: a restore of a small kernel takes ~0.1 s in all, and its
  // launcher and kernel appear within milliseconds. Then less often.
  for (let delay = 1; Date.now() < deadline && stillHoping();) {
    const pid = find();
    if (pid) {
      return pid;
    }
    await sleep(delay);
    if (Date.now() - started > 100) {
      delay = Math.min(delay * 2, 50);
    }
  }
  throw new Error(`${what} did not start`);
}

/** `/proc/<pid>/fd/<fd>` as the kernel sees it, e.g. "pipe:[1234]"; null when unreadable. */
export async function fdTarget(pid: number, fd: number): Promise<string | null> {
  return fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => null);
}

export interface PipelineOptions {
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** Also put the output pipe on fd 3. */
  pipeOnFd3?: boolean;
  /**
   * How many processes stand between the launcher and the kernel (0, the default: the kernel is
   * the launcher's child; a CRIU restore has a namespace's init and `criu` in between).
   */
  kernelDepth?: number;
}

/**
 * Runs `argv` with stdout+stderr on one real pipe, the shell's stdout. The shell's own stderr says
 * only how its children ended ("Killed" when a kernel is stopped): it is no kernel output.
 */
export function spawnPipeline(argv: string[], options: PipelineOptions): ChildProcess {
  const script = options.pipeOnFd3 ? PIPELINE_WITH_FD3 : PIPELINE;
  const [wrapper, ...args] = diesWithParentSurely(
    ['/bin/sh', '-c', script, 'sh', ...argv],
    String(process.pid)
  );
  return spawn(wrapper, args, {
    env: options.env,
    cwd: options.cwd,
    stdio: ['ignore', 'pipe', 'pipe']
  });
}

/**
 * The launcher among the shell's two children, once both have started: the one that is not
 * `cat` (before its exec, `cat`'s process is a copy of the shell, so one child alone says
 * nothing).
 */
function findLauncher(shellPid: number): number | undefined {
  const children = childrenOf(shellPid);
  const cat = children.findIndex(pid => commandName(pid) === 'cat');
  return children.length === 2 && cat >= 0 ? children[1 - cat] : undefined;
}

/**
 * A kernel started through a pipeline: `shell` -> `launcherPid` (unshare / criu restore /
 * dmtcp_launch...) -> `pid` (the kernel). Killing the launcher takes the kernel with it (the
 * engines arrange a parent-death signal or a coordinator); `terminate` kills both.
 */
export class PipelineKernel implements KernelProcess {
  readonly exited: Promise<KernelExit>;
  private exitInfo: KernelExit | null = null;
  private watcher: NodeJS.Timeout | undefined;

  constructor(
    private readonly shell: ChildProcess,
    readonly launcherPid: number,
    readonly pid: number
  ) {
    // How the shell's children ended ("Killed"): not for the log (see spawnPipeline).
    shell.stderr?.resume();
    this.exited = new Promise(resolve => {
      const done = (info: KernelExit) => {
        if (!this.exitInfo) {
          this.exitInfo = info;
          clearInterval(this.watcher);
          resolve(info);
        }
      };
      // The kernel is the launcher's child, not ours: watch it through /proc. A child the
      // kernel leaves behind may hold the pipe open, so the shell's exit alone is not enough.
      this.watcher = setInterval(() => {
        if (!isRunning(this.pid)) {
          done({ code: null, signal: null });
        }
      }, 100);
      this.watcher.unref();
      shell.once('exit', (code, signal) => done({ code, signal }));
    });
  }

  get stdout(): Readable | null {
    return this.shell.stdout;
  }

  /** The kernel's stderr is merged into its stdout (one pipe, see spawnPipeline). */
  get stderr(): Readable | null {
    return null;
  }

  signal(signal: NodeJS.Signals): void {
    try {
      process.kill(this.pid, signal);
    } catch {
      // Already gone.
    }
  }

  /**
   * Kills the kernel and its launcher, and resolves once both hold no file: a restore may then
   * bind the kernel's sockets and take its locks again. That takes a few milliseconds, so it is
   * watched every millisecond; the shell and `cat` wind down afterwards, unwatched.
   */
  async terminate(): Promise<void> {
    // The launcher first: an `unshare` that outlives its killed child, even briefly, prints
    // "sigprocmask unblock failed" into the kernel's output (the server's log); killed first,
    // it takes the kernel with it.
    for (const pid of [this.launcherPid, this.pid]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    const deadline = Date.now() + 5000;
    while (!(holdsNoFiles(this.pid) && holdsNoFiles(this.launcherPid))) {
      if (Date.now() > deadline) {
        this.shell.kill('SIGKILL');
        break;
      }
      await sleep(1);
    }
  }
}

/**
 * Starts `argv` through a pipeline and waits for its launcher and, below it, the kernel.
 * `ready`, when given, is awaited before the kernel's PID is read: a launcher such as
 * `criu restore` forks helpers first, and the kernel is its running child only once it is done.
 */
export async function startPipelineKernel(
  argv: string[],
  options: PipelineOptions,
  timeoutMs = 30000,
  ready?: (launcherPid: number, failed: () => boolean) => Promise<number | void>
): Promise<PipelineKernel> {
  const shell = spawnPipeline(argv, options);
  const forked = new Set<number>();
  let failed = false;
  const output = new OutputCollector().attach(shell);
  shell.once('exit', () => (failed = true));
  shell.once('error', () => (failed = true));
  try {
    const launcher = await waitForPid(
      () => findLauncher(shell.pid ?? 0),
      timeoutMs,
      argv[0],
      () => !failed
    );
    // A launcher that forks what it restores (criu restore) and dies half way (kill -9) leaves
    // those tasks stopped, orphaned, holding the output pipe: the shell never exits, so its
    // death is watched, and what it forked is remembered (at every poll of `ready` and of the
    // wait for the kernel) to be killed below.
    // `ready` may know the kernel (the task CRIU restored), else it is found below the launcher.
    const known = await ready?.(launcher, () => {
      addDescendants(launcher, forked);
      return failed || !isRunning(launcher);
    });
    const kernel = await waitForPid(
      () =>
        known
          ? isRunning(known)
            ? known
            : undefined
          : runningDescendant(launcher, (options.kernelDepth ?? 0) + 1),
      timeoutMs,
      'the kernel',
      () => {
        addDescendants(launcher, forked);
        return !failed && isRunning(launcher) && (!known || isRunning(known));
      }
    );
    output.detach();
    return new PipelineKernel(shell, launcher, kernel);
  } catch (error) {
    for (const pid of [...childrenOf(shell.pid ?? 0), ...[...forked].filter(isRunning)]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone.
      }
    }
    shell.kill('SIGKILL');
    const detail = output.text.trim();
    throw Object.assign(new Error(`${(error as Error).message}${detail ? `: ${detail}` : ''}`), {
      output: detail
    });
  }
}

// Lazy restore under CRIU (userfaultfd): `criu restore --lazy-pages` resumes the kernel before its
// memory is back, and CRIU's `criu lazy-pages` daemon serves every page on fault and the rest in
// the background. This module decides whether a restore is lazy, and runs and watches the daemon.
// The measured facts it relies on are in docs/engines.md ("Lazy restore").

import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';

import { log } from '../supervisor/log';
import { criuFailure, readLog } from './criu-log';
import {
  faultsInLog,
  hintPages,
  type HotPages,
  logsFaults,
  recordFaults,
  servedImage
} from './criu-prefetch';
import type { ServedPages } from './page-server';
import { diesWithParent, killedBy, runTool } from './tools';

/** KERNEL_CHECKPOINT_LAZY=0 turns lazy restore off (a full restore reads the whole image first). */
export const LAZY_SETTING = 'KERNEL_CHECKPOINT_LAZY';

/** How long the daemon may outlive its kernel before it is stopped. */
const DAEMON_GRACE_MS = 2000;
/** How long the daemon may take to listen (it reads the image's process tree first). */
const READY_TIMEOUT_MS = 30000;

/** Whether restores are lazy, and if not, why (for the log and `kernel-checkpoint doctor`). */
export interface RestoreMode {
  lazy: boolean;
  reason: string;
}

/**
 * Whether a restore can be lazy here: the setting allows it and the kernel supports
 * non-cooperative userfaultfd for this user (`criu check --feature uffd-noncoop`; an older kernel,
 * or a non-root user with vm.unprivileged_userfaultfd=0, fails it).
 */
export async function lazyRestoreMode(criu: string, env: NodeJS.ProcessEnv): Promise<RestoreMode> {
  if (env[LAZY_SETTING] === '0') {
    return { lazy: false, reason: `${LAZY_SETTING}=0 turns it off` };
  }
  const check = await runTool(criu, ['check', '--feature', 'uffd-noncoop'], {
    env,
    timeoutMs: 10000
  });
  if (check.code !== 0) {
    const said = `${check.stdout}\n${check.stderr}`
      .split('\n')
      .map(line => line.trim())
      .filter(line => line && !/RLIMIT_NOFILE/.test(line));
    return {
      lazy: false,
      reason:
        `userfaultfd does not work here (\`criu check --feature uffd-noncoop\`: ` +
        `${said[said.length - 1] ?? killedBy(check.signal) ?? `exit ${check.code}`})`
    };
  }
  return { lazy: true, reason: 'userfaultfd (criu check --feature uffd-noncoop: supported)' };
}

/** How the daemon ended. */
export interface LazyEnd {
  /** Every page was transferred (the daemon exits 0 once none is left). */
  complete: boolean;
  /** From the restore's start to the daemon's end. */
  ms: number;
  /** Why it ended early, when it did. */
  problem?: string;
  /** The pages each process faulted on, in order (its log at -v4). */
  faults: HotPages;
}

/**
 * A running `criu lazy-pages` daemon for one restore. It listens on `lazy-pages.socket` in its
 * work folder, which `criu restore --lazy-pages -W` of the same folder connects to; it dies with
 * the supervisor (DIES_WITH_PARENT), and exits once every page is in the kernel's memory.
 */
export class LazyPagesDaemon {
  readonly ended: Promise<LazyEnd>;
  /** It exited before every page was served (set at its exit, before `ended` settles). */
  failed = false;
  /** Called at once (synchronously) when it fails, with how it ended. */
  onFailure: (how: string) => void = () => undefined;
  private stopping = false;

  private constructor(
    private readonly child: ChildProcess,
    readonly workDir: string,
    private readonly logFile: string,
    private readonly started: number,
    /** The folder CRIU restores from: the image, or its prefetch copy (criu-prefetch.ts). */
    readonly imageDir: string,
    /** The image's own folder, and the hint its prefetch used (null: none). */
    readonly sourceDir: string,
    readonly hint: HotPages | null
  ) {
    this.ended = new Promise(resolve => {
      child.once('exit', (code, signal) => {
        this.exited = true;
        // Killed, or failed: not its own end (it exits 0 when every page is in, or when the
        // kernel is gone, within ~25 ms: measured).
        this.failed = !this.stopping && (code !== 0 || signal !== null);
        if (this.failed) {
          // At once, not after reading its log: the kernel may already be reading zeros.
          this.onFailure(killedBy(signal) ?? `exit ${code}`);
        }
        void this.end(code, signal).then(resolve);
      });
    });
  }

  /**
   * Starts the daemon for `imageDir`, in a new private folder under `parentDir`, without waiting
   * for it: `criu restore` starts meanwhile behind `waitForDaemon` (both load CRIU, ~0.1 s on a
   * busy machine), and the gate lets it on once the daemon listens (its --status-fd), lazily, or
   * without --lazy-pages when the daemon could not start or `vetoed` gives a reason.
   */
  static async start(
    criu: string,
    imageDir: string,
    parentDir: string,
    env: NodeJS.ProcessEnv,
    vetoed: Promise<string | null> = Promise.resolve(null),
    pageServer?: { port: number; pages: ServedPages }
  ): Promise<LazyPagesDaemon> {
    const started = Date.now();
    // Lazily or in full, `criu restore` waits for the eager pages of served ones (handled here,
    // before any await, so that a failure is never an unhandled rejection).
    const written = pageServer?.pages.ready().then(
      () => null,
      (error: unknown) => error as Error
    );
    const workDir = await fs.mkdtemp(path.join(parentDir, 'lazy-'));
    const gate = path.join(workDir, 'gate');
    const made = await runTool('mkfifo', ['-m', '600', gate], { env, timeoutMs: 10000 });
    if (made.code !== 0) {
      await fs.rm(workDir, { recursive: true, force: true });
      throw new Error(`mkfifo failed: ${made.stderr.trim() || made.error?.message}`);
    }
    const logFile = path.join(workDir, 'lazy-pages.log');
    // What the daemon reads: the image, or a copy whose pagemaps send the hinted pages first.
    const source = await servedImage(imageDir, workDir, env);
    // Served pages: `imageDir` is a temporary folder, so the hint the store applied, and where
    // the faults go for the next restore, are those of the image's own folder.
    const kept = pageServer?.pages.hint;
    const hint = kept ? kept.pages : source.hint;
    const countsFaults = logsFaults(env, hint);
    const [file, ...args] = diesWithParent([
      criu,
      'lazy-pages',
      '-D',
      source.dir,
      '-W',
      workDir,
      '-o',
      logFile,
      // Debug: its "#PF at" lines are the next restore's prefetch hint.
      ...(countsFaults ? ['-v4'] : []),
      '--status-fd',
      '3',
      // The pages' bytes from our page server (a chunk image), not from the pages files.
      ...(pageServer
        ? ['--page-server', '--address', '127.0.0.1', '--port', String(pageServer.port)]
        : [])
    ]);
    const child = spawn(file, args, { env, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
    child.stderr?.resume();
    const daemon = new LazyPagesDaemon(
      child,
      workDir,
      logFile,
      started,
      source.dir,
      kept?.imageDir ?? imageDir,
      hint
    );
    daemon.gate = gate;
    daemon.served = pageServer !== undefined;
    daemon.countsFaults = countsFaults;
    const status = child.stdio[3] as NodeJS.ReadableStream | null;
    const ready = new Promise<string | null>(resolve => {
      const timer = setTimeout(() => resolve('it did not listen in time'), READY_TIMEOUT_MS);
      status?.once('data', () => {
        clearTimeout(timer);
        resolve(null);
      });
      void daemon.ended.then(end => {
        clearTimeout(timer);
        resolve(end.problem ?? 'it exited');
      });
    });
    // Why not lazily: lazy restore cannot work here (`vetoed`), or the daemon did not start.
    const timings = env.KERNEL_CHECKPOINT_TIMINGS === '1';
    const since = performance.now();
    const eagerIn = written?.then(() => performance.now() - since);
    daemon.listening = Promise.all([vetoed, ready, written]).then(
      async ([veto, notReady, unwritten]) => {
        if (timings) {
          log.info(
            `timing: criu lazy-pages listening ${(performance.now() - since).toFixed(0)} ms after ` +
              `it started` +
              (eagerIn ? `, the eager pages in ${(await eagerIn).toFixed(0)} ms` : '')
          );
        }
        let problem = veto ?? notReady;
        let how = problem ? 'full' : 'lazy';
        if (unwritten) {
          daemon.fullFailure = unwritten;
          problem = `the pages it does not serve could not be written (${unwritten.message})`;
          how = 'fail';
        } else if (problem && pageServer) {
          // The folder's pages files are sparse: a full restore needs them written out first.
          how = await pageServer.pages.fillIn().then(
            () => 'full',
            (error: unknown) => {
              daemon.fullFailure = error as Error;
              return 'fail';
            }
          );
        }
        try {
          // O_RDWR: never blocks, and the line stays in the FIFO until the restore's shell reads it.
          daemon.gateHandle = await fs.open(gate, 'r+');
          await daemon.gateHandle.write(`${how}\n`);
        } catch (error) {
          // The restore was given up meanwhile (a killed `criu restore`: its folder is gone), and
          // nothing waits on the gate any more.
          problem ??= `its gate is gone (${(error as Error).message})`;
        }
        if (problem) {
          daemon.stop();
        }
        return problem;
      }
    );
    return daemon;
  }

  /** Why the pages could not be written out for a full restore instead (it was not started). */
  fullFailure: Error | null = null;
  /** Its log has its faults (-v4), for the hint. */
  countsFaults = false;

  /** The FIFO the restore waits on (see `waitForDaemon`). */
  private gate = '';
  private served = false;
  private gateHandle: fs.FileHandle | null = null;
  /** Null once the daemon listens; why not, when it could not start (it is stopped). */
  listening: Promise<string | null> = Promise.resolve(null);

  /**
   * `restore` (criu restore's argv), started once the daemon listens: with --lazy-pages and the
   * daemon's work folder (its socket's), or as it is, a full restore, when the daemon failed.
   */
  waitForDaemon(restore: string[]): string[] {
    return [
      '/bin/sh',
      '-c',
      // Without a word on the gate: in full, unless the pages are served (then their files are
      // sparse, and it fails rather than restore zeros).
      'g=$1; w=$2; how=$3; shift 3; read -r said <"$g" && how=$said; ' +
        'case $how in lazy) exec "$@" --lazy-pages -W "$w";; full) exec "$@";; esac; ' +
        'echo "not restored: the pages are not in the image folder" >&2; exit 1',
      'sh',
      this.gate,
      this.workDir,
      this.served ? 'fail' : 'full',
      ...restore
    ];
  }

  /** Lets go of the gate, once the restore has read it. */
  async closeGate(): Promise<void> {
    await this.gateHandle?.close().catch(() => undefined);
    this.gateHandle = null;
    this.gateClosed = true;
    if (this.exited) {
      await this.removeWorkDir();
    }
  }

  private gateClosed = false;
  private exited = false;

  private async removeWorkDir(): Promise<void> {
    await fs.rm(this.workDir, { recursive: true, force: true }).catch(() => undefined);
  }

  /** The daemon's pid (for tests that kill it: a page server dying mid-way). */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Ends the daemon on purpose (the kernel is gone, or the restore failed). */
  stop(): void {
    this.stopping = true;
    this.child.kill('SIGKILL');
  }

  private async end(code: number | null, signal: NodeJS.Signals | null): Promise<LazyEnd> {
    const ms = Date.now() - this.started;
    let problem: string | undefined;
    const text = await readLog(this.logFile);
    if (code !== 0 && !this.stopping) {
      problem = criuFailure(
        text,
        { signal, message: code !== null ? `exit ${code}` : undefined },
        "serve the kernel's pages"
      ).message;
    }
    // Not while the restore may still wait on the gate in it (the gate says full, then).
    if (this.gateClosed) {
      await this.removeWorkDir();
    }
    return { complete: code === 0 && !this.stopping, ms, problem, faults: faultsInLog(text) };
  }
}

/** The daemon of each kernel restored lazily whose pages may still be arriving. */
const pending = new WeakMap<object, LazyPagesDaemon>();

/**
 * Ties a lazily restored kernel and its daemon together: the end is logged; a daemon that dies
 * before every page arrived takes the kernel with it (it would read zeros where its pages were
 * missing: measured, docs/engines.md), and the kernel's end stops the daemon.
 */
export function watchLazyKernel(
  kernel: { pid: number; exited: Promise<unknown>; terminate(): Promise<void> },
  daemon: LazyPagesDaemon,
  imageBytes: number,
  server: {
    end(): void;
    ended: Promise<{ requests: number; pages: number; readMs: number }>;
  } | null = null
): void {
  pending.set(kernel, daemon);
  let kernelGone = false;
  // A kernel stopped on purpose (replaced by a restore, shut down) loses nothing with its daemon.
  let stopping = false;
  const terminate = kernel.terminate.bind(kernel);
  kernel.terminate = () => {
    stopping = true;
    return terminate();
  };
  void kernel.exited.then(() => {
    kernelGone = true;
    // It ends by itself once the kernel is gone; stopped only if it does not. Not at once: a
    // kernel that died of its daemon's death (a fault on a missing page) may be seen first.
    setTimeout(() => daemon.stop(), DAEMON_GRACE_MS).unref();
  });
  daemon.onFailure = how => {
    if (kernelGone || stopping) {
      return;
    }
    void kernel.terminate();
    log.error(
      `lazy restore: the page server (criu lazy-pages) ended before every page was in memory ` +
        `(${how}); the kernel is stopped, as it would read zeros where its pages are missing. ` +
        `Restore the checkpoint again, or set ${LAZY_SETTING}=0 to restore in full.`
    );
  };
  void daemon.ended.then(end => {
    server?.end();
    if (pending.get(kernel) === daemon) {
      pending.delete(kernel);
    }
    if (end.complete) {
      void recordFaults(kernel, daemon.sourceDir, daemon.hint, end.faults);
    }
    if (end.complete && !kernelGone) {
      void (server?.ended ?? Promise.resolve(null)).then(served =>
        log.info(
          `lazy restore: every page is in memory ${end.ms} ms after the restore began ` +
            `(${(imageBytes / 2 ** 20).toFixed(0)} MiB served by criu lazy-pages` +
            (served
              ? ` from the chunk store: ${served.requests} requests, ` +
                `${served.readMs.toFixed(0)} ms reading and checking chunks`
              : '') +
            (daemon.countsFaults
              ? `, ${hintPages(end.faults)} page faults)`
              : ', faults not logged: the hint is full or prefetch is off)')
        )
      );
    }
  });
}

/**
 * Resolves once a lazily restored kernel has all its pages: a CRIU dump of a process whose pages
 * are still arriving succeeds but leaves the missing ones out of the image (measured: 324 MiB of a
 * 1.1 GiB kernel), so a checkpoint waits for this first. Rejects when the daemon failed (the
 * kernel was stopped).
 */
export async function untilResident(kernel: object): Promise<number> {
  const daemon = pending.get(kernel);
  if (!daemon) {
    return 0;
  }
  const waiting = Date.now();
  const end = await daemon.ended;
  if (!end.complete) {
    throw new Error(`the lazy restore's page server ended early (${end.problem ?? 'stopped'})`);
  }
  return Date.now() - waiting;
}

/** The daemon serving `kernel`'s pages, while it runs (tests and the bench read its pid). */
export function lazyDaemonOf(kernel: object): LazyPagesDaemon | undefined {
  return pending.get(kernel);
}

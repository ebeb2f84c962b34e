// The CRIU engine: the kernel runs as init of its own PID namespace, so that a restore never
// collides with a PID that is taken; CRIU dumps it with --leave-running and restores it as a
// child of `criu restore`, which stays its parent (Node would never reap a re-parented task).
// The measured facts the flags below answer are in docs/engines.md ("CRIU").

import { promises as fs, readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  LAZY_SETTING,
  LazyPagesDaemon,
  lazyRestoreMode,
  untilResident,
  watchLazyKernel,
  type RestoreMode
} from './criu-lazy';
import { carryHint } from './criu-prefetch';
import { criuFailure, readLog } from './criu-log';
import { PageServer, type ServedPages } from './page-server';
import {
  EngineError,
  EngineKilled,
  type Engine,
  type EngineProbe,
  type LaunchSpec,
  type Snapshot,
  stopCauses
} from './engine';
import {
  childrenOf,
  fdTarget,
  isRunningOn,
  runningDescendant,
  startPipelineKernel,
  type PipelineKernel
} from './process';
import { underPrivateUmask } from '../store/private-umask';
import { log } from '../supervisor/log';
import {
  diesWithParent,
  findExecutable,
  firstMissing,
  isExecutable,
  runTool,
  UTIL_LINUX_TOOLS
} from './tools';

/** CRIU before 4.2 cannot dump a process holding an AF_INET socket on Linux >= 6.16. */
export const MINIMUM_CRIU_VERSION = [4, 2] as const;

/** How long a dump may take before it is stopped (10 min: a few GB/s, many GiB). */
const DUMP_TIMEOUT_MS = 600000;

/** Flags both sides need: the kernel may hold TCP connections and flocks. */
const COMMON_FLAGS = ['--tcp-close', '--file-locks'];
/** Where the parasite mounts /proc during a dump, relative to the dumped task's working folder. */
const PARASITE_PROC_MOUNTPOINT = 'proc.crtools';

/**
 * A fork's namespaces (docs/engines.md, "Forks and isolated restores"): `unshare` makes mount and network namespaces,
 * and this script brings up loopback in them (ipykernel binds a 127.0.0.1 port), puts the fork's
 * own folder ("$2") at the image's ipc folder ("$1") and becomes `criu restore`. No PID namespace
 * of its own: the kernel is init of one anyway, and CRIU restoring from inside another one failed
 * ("Unable to set a monotonic clock offset").
 */
const FORK_NAMESPACES = [
  'unshare',
  '--mount',
  '--net',
  '--propagation',
  'private',
  '/bin/sh',
  '-c',
  'ip link set lo up && mkdir -p -m 700 "$1" && mount --bind "$2" "$1" && shift 2 && exec "$@"',
  'sh'
];

/**
 * Every `criu restore` runs in a PID namespace whose init is a shell of ours (docs/engines.md,
 * "Nothing outlives the supervisor"): CRIU gives the tasks it restores their parent-death signal
 * only at the end of a restore, but when the namespace's init dies (with `unshare`, with the
 * pipeline, with the supervisor: kill -9 included), the kernel kills every process in it. CRIU
 * is not that init (as init its start-up checks fail: the time namespace's clock offsets), and
 * needs a /proc of its own namespace (`--mount-proc`, else "Can't find rt vDSO"); that /proc's
 * mount namespace is CRIU's alone: `-J mnt:` puts the restored kernel back into the mount
 * namespace the script started in (fd 9), where a later `criu dump` finds it.
 */
const RESTORE_PID_NAMESPACE = [
  '/bin/sh',
  '-c',
  'exec 9</proc/self/ns/mnt && exec unshare --pid --fork --kill-child --mount-proc /bin/sh -c \'"$@"; exit $?\' sh "$@"',
  'sh'
];
/** CRIU's flag that joins the mount namespace RESTORE_PID_NAMESPACE kept open on fd 9. */
const JOIN_OUTER_MOUNT_NAMESPACE = ['-J', 'mnt:/proc/self/fd/9'];
/** The processes between the pipeline's launcher (`unshare`) and the kernel: init, `criu`. */
const RESTORED_KERNEL_DEPTH = 2;

/** The tools a restore in namespaces of its own (every one, and a fork's) needs besides CRIU's. */
const ISOLATION_TOOLS = ['ip', 'mount', 'nsenter'];

/** The namespace `kind` of process `pid` ("mnt:[4026531841]"), null when unreadable. */
async function namespaceOf(pid: number | 'self', kind: string): Promise<string | null> {
  return fs.readlink(`/proc/${pid}/ns/${kind}`).catch(() => null);
}

/**
 * How to run `criu dump` for a kernel: from the host for a kernel in the host's mount namespace;
 * for a fork, from inside its mount and network namespaces (`nsenter`). CRIU dumping a fork
 * from outside would see a foreign mount namespace and try to dump it into the image; from
 * inside, the image is like the original's, its ipc folder at the same path.
 */
async function dumpCommand(criu: string, pid: number): Promise<{ file: string; prefix: string[] }> {
  if ((await namespaceOf(pid, 'mnt')) === (await namespaceOf('self', 'mnt'))) {
    return { file: criu, prefix: [] };
  }
  return { file: 'nsenter', prefix: ['-t', String(pid), '--mount', '--net', '--', criu] };
}

/** CAP_CHECKPOINT_RESTORE (40) and CAP_SYS_ADMIN (21) in /proc/self/status's CapEff. */
async function mayCheckpoint(): Promise<boolean> {
  if (process.getuid?.() === 0) {
    return true;
  }
  const status = await fs.readFile('/proc/self/status', 'utf8').catch(() => '');
  const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  if (!match) {
    return false;
  }
  const caps = BigInt(`0x${match[1]}`);
  return ((caps >> 40n) & 1n) === 1n || ((caps >> 21n) & 1n) === 1n;
}

function parseVersion(text: string): number[] | null {
  const match = /Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return match ? match.slice(1).map(part => Number(part ?? 0)) : null;
}

function atLeast(version: number[], minimum: readonly number[]): boolean {
  for (let i = 0; i < minimum.length; i++) {
    if ((version[i] ?? 0) !== minimum[i]) {
      return (version[i] ?? 0) > minimum[i];
    }
  }
  return true;
}

export class CriuEngine implements Engine<PipelineKernel> {
  readonly name = 'criu';
  readonly acceptsConnectionsWhileRestoring = true;
  readonly forks = true;
  private probed: Promise<EngineProbe> | null = null;
  private restoreModeFound: Promise<RestoreMode> | null = null;
  private modeFound: RestoreMode | null = null;

  constructor(private readonly env: NodeJS.ProcessEnv = process.env) {}

  probe(): Promise<EngineProbe> {
    this.probed ??= this.doProbe();
    return this.probed;
  }

  private async criu(): Promise<string> {
    const probe = await this.probe();
    if (!probe.ok || !probe.path) {
      throw new EngineError(
        'engine_unavailable',
        probe.problem ?? 'CRIU cannot run here.',
        probe.remedy
      );
    }
    return probe.path;
  }

  private async doProbe(): Promise<EngineProbe> {
    const remedy =
      'Install CRIU 4.2 or newer (`make lab` puts one in the project venv), run as root or with ' +
      'CAP_CHECKPOINT_RESTORE, or set KERNEL_CHECKPOINT_CRIU to its path.';
    const configured = this.env.KERNEL_CHECKPOINT_CRIU;
    if (configured && !(await isExecutable(configured))) {
      return {
        name: this.name,
        ok: false,
        problem: `CRIU is not installed: KERNEL_CHECKPOINT_CRIU names ${configured}, which is not an executable.`,
        remedy
      };
    }
    const found = configured || (await findExecutable('criu', this.env));
    if (!found) {
      return {
        name: this.name,
        ok: false,
        problem: 'CRIU is not installed (no `criu` on PATH).',
        remedy
      };
    }
    const missing = await firstMissing(
      ['unshare', 'setsid', 'flock', ...UTIL_LINUX_TOOLS],
      this.env
    );
    if (missing) {
      return {
        name: this.name,
        ok: false,
        path: found,
        problem: `\`${missing}\` (util-linux) is not on PATH.`,
        remedy: 'Install util-linux.'
      };
    }
    const result = await runTool(found, ['--version'], { env: this.env, timeoutMs: 10000 });
    if (result.error) {
      return {
        name: this.name,
        ok: false,
        path: found,
        problem: `${found} does not run: ${(result.stderr || result.error.message).split('\n')[0]}`,
        remedy
      };
    }
    const version = parseVersion(result.stdout);
    const versionText = version ? version.join('.') : 'unknown';
    if (!version || !atLeast(version, MINIMUM_CRIU_VERSION)) {
      return {
        name: this.name,
        ok: false,
        path: found,
        version: versionText,
        problem: `CRIU ${versionText} is too old: ${MINIMUM_CRIU_VERSION.join('.')} or newer is needed on this kernel.`,
        remedy
      };
    }
    if (!(await mayCheckpoint())) {
      return {
        name: this.name,
        ok: false,
        path: found,
        version: versionText,
        problem: 'CRIU needs root or CAP_CHECKPOINT_RESTORE, and this process has neither.',
        remedy
      };
    }
    return { name: this.name, ok: true, path: found, version: versionText };
  }

  async launch(spec: LaunchSpec): Promise<PipelineKernel> {
    await this.criu();
    // init of a new PID namespace, session leader (CRIU dumps a session leader's tree);
    // --kill-child: the kernel dies with `unshare`, which dies with the pipeline's shell, which
    // dies with the supervisor (process.ts). The kernel keeps that parent-death signal in its
    // image, so a restored kernel dies with `criu restore` in turn.
    // Found now (it runs `criu check`), so that the first restore does not wait for it.
    void this.restoreMode().catch(() => undefined);
    return startPipelineKernel(
      ['unshare', '--pid', '--fork', '--kill-child', 'setsid', ...spec.argv],
      { env: spec.env, cwd: spec.cwd }
    );
  }

  async checkpoint(kernel: PipelineKernel, imageDir: string): Promise<Snapshot> {
    const criu = await this.criu();
    const probe = await this.probe();
    await this.untilWhole(kernel);
    // The pipe to the supervisor's log (the launcher's stdout) is the kernel's only pipe to a
    // process outside the image: a restore hands it the new pipeline's pipe in its place.
    // (Its fd 1 and 2 are not it: ipykernel swaps them for pipes of its own, inside the image.)
    const outputPipe = await fdTarget(kernel.launcherPid, 1);
    // Not in the image folder: on a full disk the log must still be writable to say so.
    const logFile = path.join(
      os.tmpdir(),
      `kernel-checkpoint-dump-${process.pid}-${Date.now()}.log`
    );
    const started = Date.now();
    try {
      const dump = await dumpCommand(criu, kernel.pid);
      const [file, ...args] = await underWorkingFolderLock(kernel.pid, [
        dump.file,
        ...dump.prefix,
        'dump',
        '-t',
        String(kernel.pid),
        '-D',
        imageDir,
        '--leave-running',
        ...COMMON_FLAGS,
        '-o',
        logFile
      ]);
      // Under umask 077: the image's files and the log are born private.
      const result = await underPrivateUmask(runTool)(file, args, {
        env: this.env,
        timeoutMs: DUMP_TIMEOUT_MS
      });
      if (result.code !== 0) {
        const signal = result.signal ?? signalBehindFlock(result.code);
        const failure = criuFailure(
          await readLog(logFile),
          {
            signal,
            timedOutAfterS: result.timedOut ? DUMP_TIMEOUT_MS / 1000 : undefined,
            message: result.stderr || result.error?.message
          },
          'snapshot the kernel'
        );
        // Killed from outside (not our timeout): the kernel may die of it (EngineKilled).
        throw signal && !result.timedOut
          ? new EngineKilled(signal, failure.message, failure.detail)
          : failure;
      }
    } finally {
      await fs.rm(logFile, { force: true });
    }
    await carryHint(kernel, imageDir);
    return {
      version: probe.version ?? 'unknown',
      frozenMs: Date.now() - started,
      data: { outputPipe: outputPipe?.startsWith('pipe:') ? outputPipe : null }
    };
  }

  async restore(
    imageDir: string,
    data: Record<string, unknown>,
    spec: LaunchSpec,
    lazily = true
  ): Promise<PipelineKernel> {
    const criu = await this.criu();
    const logFile = path.join(spec.workDir, `criu-restore-${Date.now()}.log`);
    // The kernel's old stdout/stderr pipe becomes the pipeline's pipe, on criu's fd 3.
    const inherit =
      typeof data.outputPipe === 'string' ? ['--inherit-fd', `fd[3]:${data.outputPipe}`] : [];
    const isolate = spec.isolate;
    // Checked before the lazy-pages daemon starts: nothing to stop when a tool is missing.
    if (isolate) {
      const missing = await firstMissing(ISOLATION_TOOLS, this.env);
      if (missing) {
        throw new EngineError(
          'engine_unavailable',
          `A restore in namespaces of its own (every CRIU restore, and a fork's) needs \`${missing}\` (util-linux, iproute2), which is not on PATH.`
        );
      }
    }
    // A chunk image's pages are served from its chunks when the restore is lazy.
    // Without our page server, the pages files (sparse until then) are written out first.
    const server = lazily && spec.pages ? await this.servePages(spec.pages) : null;
    if (!server) {
      await spec.pages?.fillIn();
    }
    const lazy = lazily ? await this.startLazyPages(criu, imageDir, spec, server) : null;
    if (!lazy && server) {
      server.end();
      await spec.pages?.fillIn();
    } else if (lazy?.pid !== undefined) {
      server?.trust(lazy.pid);
    }
    let restored: PipelineKernel | null = null;
    if (server) {
      server.onFailure = error => {
        if (restored) {
          // Killed before the daemon hears anything: the faulting kernel never reads a page it
          // was not given.
          stopCauses.set(restored, error);
          void restored.terminate();
          log.error(
            `lazy restore: the kernel's pages could not be served (${error.message}); the kernel ` +
              `is stopped rather than run on missing pages. Restore another checkpoint, or ` +
              `delete the damaged one.`
          );
          void restored.exited.then(() => server.end());
        }
        // Still restoring: unanswered, the fault waits; the kernel is stopped once it is known.
      };
    }
    const restore = [
      ...RESTORE_PID_NAMESPACE,
      criu,
      'restore',
      '-D',
      // The image, or its prefetch copy (criu-prefetch.ts).
      lazy?.imageDir ?? imageDir,
      ...COMMON_FLAGS,
      ...JOIN_OUTER_MOUNT_NAMESPACE,
      ...inherit,
      '-o',
      logFile,
      '-v3'
    ];
    try {
      const kernel = await underPrivateUmask(startPipelineKernel)(
        [
          ...(isolate ? [...FORK_NAMESPACES, isolate.imageIpcDir, isolate.ownIpcDir] : []),
          ...(lazy ? lazy.waitForDaemon(restore) : restore)
        ],
        { env: spec.env, cwd: spec.cwd, pipeOnFd3: true, kernelDepth: RESTORED_KERNEL_DEPTH },
        120000,
        (launcher, failed) => this.waitForRestored(launcher, logFile, failed, spec.answered)
      );
      restored = kernel;
      const notListening = lazy && (await lazy.listening);
      const unserved = server?.failure ?? lazy?.fullFailure;
      if (unserved) {
        // A damaged chunk, found while the kernel was being restored: it never runs.
        await kernel.terminate();
        throw unserved;
      }
      if (notListening) {
        server?.end();
        if (this.modeFound?.lazy) {
          log.warn(`restored in full, not lazily: criu lazy-pages did not start (${notListening})`);
        }
      } else if (lazy?.failed) {
        // Died while CRIU was restoring: the kernel would never get its missing pages.
        await kernel.terminate();
        throw new Error((await lazy.ended).problem ?? 'criu lazy-pages ended early');
      } else if (lazy) {
        watchLazyKernel(kernel, lazy, spec.pages?.bytes ?? (await pagesBytes(imageDir)), server);
      }
      return kernel;
    } catch (error) {
      lazy?.stop();
      server?.end();
      const unserved = server?.failure ?? lazy?.fullFailure;
      if (unserved) {
        throw unserved;
      }
      if (lazy?.failed) {
        // The daemon died before the kernel ran (nothing of it read a missing page): the image
        // is fine, so it is restored again, in full.
        log.warn(
          `restoring in full: criu lazy-pages ended during the restore (${(await lazy.ended).problem})`
        );
        await lazy.closeGate();
        return this.restore(imageDir, data, spec, false);
      }
      // The pipeline's shell says how CRIU ended when its log does not ("Killed").
      const said = (error as { output?: string }).output;
      throw criuFailure(
        await readLog(logFile),
        { message: said || (error as Error).message },
        'restore the image'
      );
    } finally {
      await lazy?.closeGate();
      await fs.rm(logFile, { force: true });
    }
  }

  async untilMemoryBack(kernel: PipelineKernel): Promise<void> {
    // A daemon that failed took the kernel with it: nothing left to wait for either way.
    await untilResident(kernel).catch(() => undefined);
  }

  /**
   * Whether restores are lazy here, and why not when they are not (found once: it runs
   * `criu check`). For the log and `kernel-checkpoint doctor`.
   */
  restoreMode(): Promise<RestoreMode> {
    this.restoreModeFound ??= this.criu().then(async criu => {
      const mode = await lazyRestoreMode(criu, this.env);
      this.modeFound = mode;
      if (!mode.lazy) {
        log.info(`restores read the whole image first (not lazy): ${mode.reason}`);
      }
      return mode;
    });
    return this.restoreModeFound;
  }

  /**
   * Our page server for a lazy restore of served pages (a chunk image's), or null when it cannot
   * listen (then the restore is full, said in the log).
   */
  private async servePages(pages: ServedPages): Promise<PageServer | null> {
    try {
      const server = await PageServer.listen(pages);
      pages.retain();
      void server.ended.then(() => pages.release());
      return server;
    } catch (error) {
      log.warn(`restoring in full instead of lazily: no page server (${(error as Error).message})`);
      return null;
    }
  }

  /**
   * The page server of a lazy restore, listening, or null for a full restore (lazy restore off or
   * not possible here, or the daemon would not start: then said in the log, and the restore is
   * full rather than failed).
   */
  private async startLazyPages(
    criu: string,
    imageDir: string,
    spec: LaunchSpec,
    server: PageServer | null
  ): Promise<LazyPagesDaemon | null> {
    const mode = this.restoreMode();
    // A restore with no kernel launched before (a fork's supervisor) has not asked `criu check`
    // yet: the daemon starts meanwhile, and the restore goes on lazily only if the answer is yes.
    if (this.env[LAZY_SETTING] === '0' || this.modeFound?.lazy === false) {
      return null;
    }
    const pages = spec.pages;
    try {
      return await LazyPagesDaemon.start(
        criu,
        imageDir,
        spec.workDir,
        this.env,
        mode.then(
          found => (found.lazy ? null : found.reason),
          (error: unknown) => String(error)
        ),
        server && pages ? { port: server.port, pages } : undefined
      );
    } catch (error) {
      log.warn(`restoring in full instead of lazily: ${(error as Error).message}`);
      return null;
    }
  }

  /**
   * A kernel restored lazily is dumped only once every page is back: CRIU would leave the missing
   * ones out of the image (docs/engines.md, "Lazy restore").
   */
  private async untilWhole(kernel: PipelineKernel): Promise<void> {
    try {
      const waited = await untilResident(kernel);
      if (waited > 0) {
        log.info(`checkpoint waited ${waited} ms for the lazy restore's last pages`);
      }
    } catch (error) {
      throw new EngineError(
        'engine_failed',
        `Cannot snapshot the kernel: ${(error as Error).message}.`
      );
    }
  }

  /**
   * `criu restore` forks the kernel early; it is usable once the log says it was resumed. The log
   * is read as it grows (only new bytes), every few milliseconds: at 0 MiB the whole restore takes
   * ~0.1 s, so the poll interval is a visible part of it. Sooner still, when the supervisor
   * connected during the restore: the kernel's first answer (`answered`).
   */
  private async waitForRestored(
    launcher: number,
    logFile: string,
    failed: () => boolean,
    answered?: Promise<void>
  ): Promise<number | undefined> {
    const deadline = Date.now() + 600000;
    // The kernel answering the supervisor is the earlier sign: CRIU logs its last lines after
    // it has resumed the process.
    let running = false;
    const runs = answered?.then(() => {
      running = true;
    });
    let handle: fs.FileHandle | null = null;
    let position = 0;
    let tail = '';
    const chunk = Buffer.alloc(1 << 16);
    // The task being restored, once forked: its death is the restore's failure, at once (CRIU
    // itself was seen to wait on for minutes when it was killed ~0.1 s into the restore).
    let task: number | undefined;
    try {
      while (Date.now() < deadline) {
        if (running) {
          return task;
        }
        task ??= restoredTask(launcher);
        // Exiting counts as dead: a killed task that CRIU still traces can hang in its exit, CRIU
        // waiting for it and it for CRIU (seen: the restore "under way" for minutes).
        if (task !== undefined && !isRunningOn(task)) {
          throw new Error('the kernel being restored died');
        }
        handle ??= await fs.open(logFile, 'r').catch(() => null);
        let read = 0;
        if (handle) {
          do {
            ({ bytesRead: read } = await handle.read(chunk, 0, chunk.length, position));
            position += read;
            // The new bytes, after the end of the last ones: a phrase split by a read is seen.
            const text = tail + chunk.toString('utf8', 0, read);
            if (text.includes('Restore finished successfully')) {
              return task;
            }
            if (text.includes('Restoring FAILED')) {
              throw new Error('restore failed');
            }
            tail = text.slice(-64);
          } while (read === chunk.length);
        }
        if (failed()) {
          throw new Error('restore failed');
        }
        const pause = new Promise(resolve => setTimeout(resolve, 3));
        await (runs ? Promise.race([pause, runs]) : pause);
      }
      throw new Error('restore timed out');
    } finally {
      await handle?.close();
    }
  }
}

/**
 * The signal that killed a dump run under `flock` (underWorkingFolderLock), which exits with
 * 128 + its signal for a command killed by one; CRIU's own exit codes are 0 and 1.
 */
function signalBehindFlock(code: number | null): NodeJS.Signals | null {
  if (code === null || code <= 128) {
    return null;
  }
  const found = Object.entries(os.constants.signals).find(([, number]) => number === code - 128);
  return found ? (found[0] as NodeJS.Signals) : null;
}

/** The bytes of the memory pages in an image (its pages-*.img files), for the log. */
async function pagesBytes(imageDir: string): Promise<number> {
  const names = await fs.readdir(imageDir).catch(() => [] as string[]);
  let bytes = 0;
  for (const name of names.filter(name => /^pages-\d+\.img$/.test(name))) {
    bytes += (await fs.stat(path.join(imageDir, name)).catch(() => null))?.size ?? 0;
  }
  return bytes;
}

/**
 * The task `criu restore` (below RESTORE_PID_NAMESPACE's init) is restoring: its child in a PID
 * namespace of its own (the kernel is init of one; CRIU's helpers share CRIU's), or undefined.
 */
function restoredTask(launcher: number): number | undefined {
  const criu = runningDescendant(launcher, RESTORED_KERNEL_DEPTH);
  const own = criu === undefined ? null : pidNamespaceOf(criu);
  if (own === null || criu === undefined) {
    return undefined;
  }
  return childrenOf(criu).find(child => {
    const namespace = pidNamespaceOf(child);
    return namespace !== null && namespace !== own;
  });
}

function pidNamespaceOf(pid: number): string | null {
  try {
    return readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return null;
  }
}

/**
 * CRIU's parasite mounts the kernel's /proc on `proc.crtools` in the kernel's working folder
 * (the notebook's) for the length of a dump (`criu/pie/parasite.c`: a fixed name, no option), so
 * two kernels working in one folder (two notebooks beside each other) collide when dumped at
 * once: the second fails with "Can't create a directory (-17)". And a dump killed in between
 * leaves that folder, so every later dump of a kernel working there fails the same way.
 *
 * So every dump holds a lock on the kernel's working folder itself (`flock` on the directory:
 * no lock file to leave behind, and every user's kernels working there take turns, ~0.1 s at
 * 0 MiB), and, holding it, removes an empty `proc.crtools` there first: only a killed dump can
 * have left one (rmdir: never a folder with anything in it, never a link). A dump killed with
 * the parasite's /proc still mounted there leaves the mount too (in the kernel's mount namespace,
 * the host's: seen after kill -9 of the supervisor 111 ms into a checkpoint, and every later
 * checkpoint failed): when rmdir fails on a folder that is a proc mount, it is unmounted first
 * (`findmnt` runs only then: nothing is added to a dump's start).
 */
async function underWorkingFolderLock(kernelPid: number, argv: string[]): Promise<string[]> {
  const cwd = await fs.readlink(`/proc/${kernelPid}/cwd`).catch(() => null);
  // Only a folder that exists here: flock(1) would create a file at any other path (a removed
  // working folder reads as "<path> (deleted)").
  const isFolder = cwd
    ? await fs.stat(cwd).then(
        s => s.isDirectory(),
        () => false
      )
    : false;
  if (!cwd || !isFolder) {
    return argv;
  }
  return [
    'flock',
    cwd,
    '/bin/sh',
    '-c',
    'rmdir -- "$1" 2>/dev/null || { [ -d "$1" ] && findmnt -n -t proc -M "$1" && umount -- "$1" && rmdir -- "$1"; } >/dev/null 2>&1; shift; exec "$@"',
    'sh',
    path.join(cwd, PARASITE_PROC_MOUNTPOINT),
    // flock forks the dump: without a parent-death signal of its own, the dump of a kernel that
    // died (CRIU waiting on it) outlived a supervisor that ended (the fault suite, seed 16:
    // `criu dump` under PID 1 after kill_kernel_checkpoint).
    ...diesWithParent(argv)
  ];
}

// The DMTCP engine: unprivileged checkpoint–restart of a kernel process (Arya & Cooperman).
//
// Layout, measured with DMTCP 5.0 and ipykernel 7.4 (docs/engines.md, "DMTCP"):
// - `dmtcp_launch` execs into the kernel: the PID Node spawned *is* the kernel, so Node reaps
//   it and reports its exit. Its coordinator (one per kernel, `--coord-port 0`, port read from
//   `--port-file`) is started by this engine, as a child of the supervisor, and joined
//   (`--join-coordinator`); it exits on its own once the kernel is gone (`--exit-on-last`).
// - `dmtcp_restart` likewise becomes the restored kernel (mtcp_restart in the same PID): the
//   process Node spawned is the kernel again, reapable. It joins a new coordinator, as above.
// - `dmtcp_command -p PORT --bcheckpoint` returns once the image is written. The image is
//   `<ckptdir>/ckpt_<prog>_<uniquepid>.dmtcp`, plus a `<same>_files/` folder that holds copies of
//   files DMTCP chose to save (e.g. shared writable mappings). The image refers to that folder by
//   its ABSOLUTE path: restore recreates it there if it is missing.
// - The kernel sees virtual PIDs (os.getpid() is 40000 in the first kernel): signal the host PID
//   this engine returns, never a PID the kernel reports.
// - A restored kernel's cwd is dmtcp_restart's cwd (the image does not restore it by default).
// - Nothing outlives the supervisor: the coordinator, the launcher and the restarter run under
//   DIES_WITH_PARENT, which the kernel keeps through its execs and its restart. (A coordinator
//   that `--new-coordinator` starts daemonises, out of reach: killed before its first peer
//   joined, it stayed.)

import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  EngineError,
  type Engine,
  type EngineProbe,
  type KernelExit,
  type KernelProcess,
  type LaunchSpec,
  type Snapshot
} from './engine';
import {
  diesWithParent,
  errnoErrorCode,
  findExecutable,
  firstMissing,
  killedBy,
  OutputCollector,
  runTool,
  UTIL_LINUX_TOOLS
} from './tools';

export interface DmtcpOptions {
  /** Compress images with gzip (DMTCP's default). Off by default: ~5x slower on numeric data. */
  gzip?: boolean;
  /** Folder holding bin/dmtcp_launch etc. Defaults to the environment's DMTCP_ROOT, then PATH. */
  root?: string;
  /** How long to wait for a kernel (or a restored one) to come up under DMTCP. */
  startTimeoutMs?: number;
  /**
   * How long a checkpoint may take before it is reported as failed. Default: scaled by the
   * kernel's memory (checkpointBoundMs).
   */
  checkpointTimeoutMs?: number;
}

interface Binaries {
  launch: string;
  command: string;
  restart: string;
  coordinator: string;
}

/** What `checkpoint` returns in Snapshot.data, and `restore` expects back. */
export interface DmtcpImageData {
  /** File name of the image inside imageDir. */
  image: string;
  /** Whether the image is gzip-compressed (dmtcp_restart detects it on its own). */
  gzip: boolean;
  /** Size of the image in bytes. */
  bytes: number;
  /** Absolute path the image expects its saved-files folder at (null when there was none). */
  filesDir: string | null;
  /** Folder inside imageDir holding a copy of that folder's files (null when none). */
  filesCopy: string | null;
}

/**
 * Twice: no NOTEs and no WARNINGs in the server's log. Every kernel gets a warning that it "tried
 * to use DMTCP's checkpoint signal" (ZeroMQ's threads block every signal), harmless
 * (docs/engines.md); DMTCP's errors still print.
 */
const QUIET = ['--quiet', '--quiet'];

const TOOLS = ['dmtcp_launch', 'dmtcp_command', 'dmtcp_restart', 'dmtcp_coordinator'] as const;

const REMEDY =
  'Install DMTCP (https://github.com/dmtcp/dmtcp; it is not packaged for Debian, PyPI or npm) ' +
  'and put its bin folder on PATH, or set DMTCP_ROOT to its install prefix.';

const GIB = 1024 ** 3;

/**
 * How long a DMTCP checkpoint of a kernel holding `kernelBytes` may take before it is taken to
 * hang: 60 s plus 30 s per GiB, about ten times what it took here on 2 shared cores (1.4 s for
 * an idle kernel, 4.8 s with 1 GiB, 7.1 s with 2 GiB; docs/engines.md). A hung checkpoint
 * otherwise waits for ever: DMTCP has no timeout of its own.
 */
export function checkpointBoundMs(kernelBytes: number): number {
  return 60000 + Math.ceil((Math.max(kernelBytes, 0) / GIB) * 30000);
}

/** The memory a process holds (resident plus swapped out), from /proc; 0 when unknown. */
async function processBytes(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  let kib = 0;
  for (const match of status.matchAll(/^(?:VmRSS|VmSwap):\s+(\d+) kB/gm)) {
    kib += Number(match[1]);
  }
  return kib * 1024;
}

/** The environment DMTCP's launcher and restarter get: ours minus any DMTCP state. */
function cleanEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(env)) {
    // A supervisor that itself runs under DMTCP would hand its coordinator and preload down;
    // JPY_PARENT_PID makes ipykernel exit when its parent PID changes (restored kernels).
    if (key.startsWith('DMTCP_') || key === 'LD_PRELOAD' || key === 'JPY_PARENT_PID') {
      continue;
    }
    out[key] = value;
  }
  return out;
}

/** Last lines of DMTCP's chatter, without its "running as root" banner. */
function tail(text: string, lines = 6): string {
  return text
    .split('\n')
    .filter(
      line =>
        line.trim() &&
        !/Running dmtcp_restart as root|unknown checkpoint image|Continuing as root/.test(line)
    )
    .slice(-lines)
    .join('\n');
}

/** A kernel running under DMTCP: the process Node spawned is the kernel itself. */
export class DmtcpKernel implements KernelProcess {
  readonly exited: Promise<KernelExit>;
  private exitInfo: KernelExit | null = null;
  /** Start-up chatter of dmtcp_launch/dmtcp_restart (first 8 KiB), for error messages. */
  output = '';

  constructor(
    private readonly child: ChildProcess,
    /** This kernel's own coordinator, a child of the supervisor. */
    private readonly coordinator: ChildProcess,
    /** The coordinator's port: the only handle on this kernel's DMTCP computation. */
    readonly coordPort: number,
    /** Where this kernel's coordinator writes images (private, inside the workDir). */
    readonly ckptDir: string,
    /** The environment DMTCP's tools run with for this kernel. */
    readonly env: NodeJS.ProcessEnv
  ) {
    this.exited = new Promise(resolve => {
      const done = (code: number | null, signal: NodeJS.Signals | null) => {
        if (!this.exitInfo) {
          this.exitInfo = { code, signal };
          resolve(this.exitInfo);
        }
      };
      if (child.exitCode !== null || child.signalCode !== null) {
        done(child.exitCode, child.signalCode as NodeJS.Signals | null);
      }
      child.once('exit', (code, signal) => done(code, signal));
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get stdout(): Readable | null {
    return this.child.stdout;
  }

  get stderr(): Readable | null {
    return this.child.stderr;
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  signal(signal: NodeJS.Signals): void {
    if (this.running) {
      try {
        process.kill(this.pid, signal);
      } catch {
        // Already gone.
      }
    }
  }

  async terminate(): Promise<void> {
    try {
      if (this.running) {
        // SIGKILL is as fast as `dmtcp_command --quit` (both ~20 ms) and needs no coordinator.
        this.signal('SIGKILL');
        await Promise.race([this.exited, sleep(5000)]);
      }
      // The coordinator exits by itself once its last peer is gone (`--exit-on-last`); when it
      // never had one, it is stopped here.
      this.coordinator.kill('SIGKILL');
    } catch {
      // Never throws.
    }
  }
}

export class DmtcpEngine implements Engine<DmtcpKernel> {
  /**
   * ipykernel's fd capture keeps copies of the original stdout/stderr that DMTCP does not bring
   * back on restart; their numbers are then reused by ZeroMQ sockets, and the first C-level
   * write corrupts a connection. Without the capture, C-level output goes to the log instead.
   */
  readonly ipykernelFlags = ['--IPKernelApp.capture_fd_output=False'];
  readonly name = 'dmtcp';
  private bins: Binaries | null = null;
  private version: string | null = null;
  private readonly busy = new WeakMap<DmtcpKernel, Promise<unknown>>();

  constructor(
    private readonly env: NodeJS.ProcessEnv = process.env,
    private readonly options: DmtcpOptions = {}
  ) {}

  /** Finds the three tools under root/bin (option or DMTCP_ROOT) or on PATH. */
  private async find(): Promise<{ bins: Partial<Binaries>; missing: string[]; where: string }> {
    const root = this.options.root ?? this.env.DMTCP_ROOT;
    const dirs = root ? [path.join(root, 'bin')] : undefined;
    const bins: Partial<Binaries> = {};
    const missing: string[] = [];
    for (const tool of TOOLS) {
      const found = await findExecutable(tool, this.env, dirs);
      if (found) {
        bins[tool.slice('dmtcp_'.length) as keyof Binaries] = found;
      } else {
        missing.push(tool);
      }
    }
    return { bins, missing, where: root ? `${path.join(root, 'bin')} (DMTCP_ROOT)` : 'PATH' };
  }

  async probe(): Promise<EngineProbe> {
    const { bins, missing, where } = await this.find();
    if (missing.length) {
      return {
        name: this.name,
        ok: false,
        path: bins.launch,
        problem: `DMTCP is not installed (${missing.join(', ')} not on ${where}).`,
        remedy: REMEDY
      };
    }
    const util = await firstMissing(UTIL_LINUX_TOOLS, this.env);
    if (util) {
      return {
        name: this.name,
        ok: false,
        path: bins.launch,
        problem: `\`${util}\` (util-linux) is not on PATH.`,
        remedy: 'Install util-linux.'
      };
    }
    const result = await runTool(bins.launch!, ['--version'], {
      env: cleanEnv(this.env),
      timeoutMs: 10000
    });
    const match = /DMTCP\)\s*([\w.+-]+)/.exec(result.stdout + result.stderr);
    if (result.code !== 0 || !match) {
      return {
        name: this.name,
        ok: false,
        path: bins.launch,
        problem: `${bins.launch} --version failed: ${tail(result.stderr || result.stdout || String(result.error), 2)}`,
        remedy: REMEDY
      };
    }
    this.bins = bins as Binaries;
    this.version = match[1];
    const major = Number(match[1].split('.')[0]);
    if (!(major >= 3)) {
      return {
        name: this.name,
        ok: false,
        version: match[1],
        path: bins.launch,
        problem: `DMTCP ${match[1]} is too old (3.0 or newer is needed for --port-file and --bcheckpoint).`,
        remedy: REMEDY
      };
    }
    return { name: this.name, ok: true, version: match[1], path: bins.launch };
  }

  private async ready(): Promise<Binaries> {
    if (!this.bins) {
      const probe = await this.probe();
      if (!probe.ok) {
        throw new EngineError(
          'engine_unavailable',
          probe.problem ?? 'DMTCP cannot run here.',
          probe.remedy
        );
      }
    }
    return this.bins!;
  }

  /** The private folders DMTCP works in, inside the kernel's workDir. */
  private async folders(workDir: string): Promise<{ root: string; ckpt: string; tmp: string }> {
    const root = path.join(workDir, 'dmtcp');
    const ckpt = path.join(root, 'ckpt');
    const tmp = path.join(root, 'tmp');
    for (const dir of [root, ckpt, tmp]) {
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      await fs.chmod(dir, 0o700);
    }
    return { root, ckpt, tmp };
  }

  /**
   * Starts this kernel's coordinator, then the launcher or restarter that joins it, and waits for
   * a running peer.
   */
  private async start(
    bins: Binaries,
    file: string,
    args: string[],
    dirs: { root: string; ckpt: string; tmp: string },
    env: NodeJS.ProcessEnv,
    cwd: string
  ): Promise<DmtcpKernel> {
    const portFile = path.join(dirs.root, 'coordinator.port');
    await fs.rm(portFile, { force: true });
    const output = new OutputCollector();
    const children: ChildProcess[] = [];
    let spawnError: Error | null = null;
    const startChild = (argv: string[]): ChildProcess => {
      const [wrapper, ...wrapped] = diesWithParent(argv);
      const child = spawn(wrapper, wrapped, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
      child.once('error', error => (spawnError = error));
      children.push(child);
      output.attach(child);
      return child;
    };
    const gone = (child: ChildProcess) =>
      spawnError !== null || child.exitCode !== null || child.signalCode !== null;
    const fail = (message: string): never => {
      children.forEach(child => child.kill('SIGKILL'));
      throw new EngineError(
        'engine_failed',
        message,
        tail(output.text) || (spawnError ? String(spawnError) : undefined)
      );
    };
    const timeoutMs = this.options.startTimeoutMs ?? 30000;
    const deadline = Date.now() + timeoutMs;

    const coordinator = startChild([
      bins.coordinator,
      ...['--coord-port', '0', '--port-file', portFile, '--exit-on-last'],
      ...['--ckptdir', dirs.ckpt, '--tmpdir', dirs.tmp, '--interval', '0', ...QUIET]
    ]);
    let port = 0;
    for (let delay = 1; !port; delay = Math.min(delay * 2, 100)) {
      const text = await fs.readFile(portFile, 'utf8').catch(() => '');
      port = Number.parseInt(text.trim(), 10) || 0;
      if (!port) {
        if (gone(coordinator)) {
          fail('dmtcp_coordinator exited before it listened');
        }
        if (Date.now() > deadline) {
          fail(`dmtcp_coordinator: no port after ${timeoutMs} ms`);
        }
        await sleep(delay);
      }
    }
    const child = startChild([
      file,
      ...['--join-coordinator', '--coord-port', String(port)],
      ...['--ckptdir', dirs.ckpt, '--tmpdir', dirs.tmp, ...QUIET],
      ...args
    ]);
    const kernel = new DmtcpKernel(child, coordinator, port, dirs.ckpt, env);
    // Running means: the coordinator has our one peer and it is not in a checkpoint/restart.
    for (let delay = 5; ; delay = Math.min(delay * 2, 100)) {
      if (gone(child)) {
        fail(`${path.basename(file)} exited while starting`);
      }
      const status = await this.status(bins, port, env);
      if (status && status.running && status.peers >= 1) {
        break;
      }
      if (Date.now() > deadline) {
        await kernel.terminate();
        fail(`${path.basename(file)}: the kernel did not come up under DMTCP`);
      }
      await sleep(delay);
    }
    output.detach();
    kernel.output = output.text;
    // The coordinator's own chatter is no kernel output: read and dropped, so it never blocks.
    coordinator.stdout?.resume();
    coordinator.stderr?.resume();
    return kernel;
  }

  private async status(
    bins: Binaries,
    port: number,
    env: NodeJS.ProcessEnv
  ): Promise<{ running: boolean; peers: number } | null> {
    const result = await runTool(bins.command, ['-p', String(port), '--json', '--status'], {
      env,
      timeoutMs: 5000
    });
    try {
      const status = JSON.parse(result.stdout.trim().split('\n')[0]);
      return { running: status.running === true, peers: Number(status.num_peers) || 0 };
    } catch {
      return null;
    }
  }

  async launch(spec: LaunchSpec): Promise<DmtcpKernel> {
    const bins = await this.ready();
    const dirs = await this.folders(spec.workDir);
    // The coordinator it starts writes its restart scripts to DMTCP_CHECKPOINT_DIR (default:
    // its working directory, which is the notebook's): keep them in the kernel's own folder.
    const env = { ...cleanEnv(spec.env), DMTCP_CHECKPOINT_DIR: dirs.ckpt };
    const args = [this.options.gzip ? '--gzip' : '--no-gzip', ...spec.argv];
    return this.start(bins, bins.launch, args, dirs, env, spec.cwd);
  }

  async checkpoint(kernel: DmtcpKernel, imageDir: string): Promise<Snapshot> {
    // One checkpoint at a time per kernel (they share the coordinator and its folder).
    const previous = this.busy.get(kernel) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(() => this.checkpointNow(kernel, imageDir));
    this.busy.set(kernel, next);
    return next;
  }

  private async checkpointNow(kernel: DmtcpKernel, imageDir: string): Promise<Snapshot> {
    const bins = await this.ready();
    if (!kernel.running) {
      throw new EngineError('engine_failed', 'The kernel is not running.');
    }
    // Leave no earlier image behind, so that the one found below is this checkpoint's.
    for (const name of await fs.readdir(kernel.ckptDir)) {
      if (/^ckpt_.*\.dmtcp$/.test(name)) {
        await fs.rm(path.join(kernel.ckptDir, name), { force: true });
      }
    }
    const kernelBytes = await processBytes(kernel.pid);
    const timeoutMs = this.options.checkpointTimeoutMs ?? checkpointBoundMs(kernelBytes);
    const started = Date.now();
    const result = await runTool(bins.command, ['-p', String(kernel.coordPort), '--bcheckpoint'], {
      env: kernel.env,
      timeoutMs
    });
    const frozenMs = Date.now() - started;
    const images = (await fs.readdir(kernel.ckptDir)).filter(name => /^ckpt_.*\.dmtcp$/.test(name));
    if (result.timedOut) {
      throw await this.timedOut(bins, kernel, timeoutMs, kernelBytes);
    }
    if (result.code !== 0 || images.length !== 1) {
      const detail = tail(`${result.stdout}\n${result.stderr}\n${result.error ?? ''}`);
      const noSpace = /No space left|ENOSPC/i.test(detail);
      const killed = killedBy(result.signal);
      throw new EngineError(
        noSpace ? 'no_space' : 'engine_failed',
        killed
          ? `DMTCP's dmtcp_command was ${killed} while it checkpointed the kernel.`
          : result.code !== 0
            ? `dmtcp_command --bcheckpoint failed (exit ${result.code})${detail ? `: ${detail.split('\n').pop()}` : ''}`
            : `DMTCP wrote ${images.length} images instead of one`,
        detail || undefined
      );
    }
    const image = images[0];
    const source = path.join(kernel.ckptDir, image);
    const target = path.join(imageDir, image);
    try {
      await moveFile(source, target);
    } catch (error) {
      await fs.rm(source, { force: true });
      const code = errnoErrorCode((error as NodeJS.ErrnoException).code);
      if (code === 'no_space') {
        throw new EngineError(
          code,
          'The disk is full: the DMTCP image could not be saved.',
          String(error)
        );
      }
      if (code === 'permission_denied') {
        throw new EngineError(
          code,
          `No permission to save the DMTCP image in ${imageDir}.`,
          String(error)
        );
      }
      throw error;
    }
    await fs.chmod(target, 0o600);
    const bytes = (await fs.stat(target)).size;
    const gzip = await isGzip(target);

    // The saved-files folder is referenced by absolute path from inside the image: keep a copy
    // beside the image and its original path, so that restore can put it back there.
    const filesDir = source.replace(/\.dmtcp$/, '_files');
    let filesCopy: string | null = null;
    const saved = await fs.readdir(filesDir).catch(() => [] as string[]);
    if (saved.length) {
      filesCopy = 'files';
      await fs.cp(filesDir, path.join(imageDir, filesCopy), { recursive: true });
    }
    const data: DmtcpImageData = {
      image,
      gzip,
      bytes,
      filesDir: saved.length ? filesDir : null,
      filesCopy
    };
    return { version: this.version ?? 'unknown', frozenMs, data: { ...data } };
  }

  /**
   * The error for a checkpoint that outlived its bound. DMTCP cannot call a checkpoint off: the
   * coordinator says whether the kernel runs (the checkpoint never began, or ended late) or is
   * still held in it (its threads suspended by DMTCP; it answers nothing until it is restarted).
   */
  private async timedOut(
    bins: Binaries,
    kernel: DmtcpKernel,
    timeoutMs: number,
    kernelBytes: number
  ): Promise<EngineError> {
    const status = await this.status(bins, kernel.coordPort, kernel.env);
    const mib = Math.round(kernelBytes / 2 ** 20);
    const bound = `${Math.round(timeoutMs / 1000)} s (${
      this.options.checkpointTimeoutMs === undefined
        ? `the bound for a kernel of ${mib} MiB`
        : "the engine's checkpointTimeoutMs"
    })`;
    return new EngineError(
      'engine_failed',
      status?.running
        ? `DMTCP's checkpoint timed out after ${bound}; no image was kept, and the kernel kept running.`
        : `DMTCP's checkpoint timed out after ${bound}; no image was kept, and the kernel is still held in it (DMTCP cannot cancel a checkpoint): restart the kernel, or restore a checkpoint.`,
      status
        ? `coordinator: ${status.peers} peer(s), ${status.running ? 'running' : 'in a checkpoint'}`
        : 'the coordinator did not answer'
    );
  }

  async restore(
    imageDir: string,
    data: Record<string, unknown>,
    spec: LaunchSpec
  ): Promise<DmtcpKernel> {
    const bins = await this.ready();
    const image = typeof data.image === 'string' ? data.image : null;
    if (!image || image.includes('/') || !image.endsWith('.dmtcp')) {
      throw new EngineError('foreign_image', 'This image was not written by the DMTCP engine.');
    }
    const imagePath = path.join(imageDir, image);
    if (!(await fs.stat(imagePath).catch(() => null))?.isFile()) {
      throw new EngineError(
        'foreign_image',
        `The DMTCP image ${image} is missing from ${imageDir}.`
      );
    }
    const filesDir = typeof data.filesDir === 'string' ? data.filesDir : null;
    const filesCopy = typeof data.filesCopy === 'string' ? data.filesCopy : null;
    if (filesDir && filesCopy && path.isAbsolute(filesDir)) {
      // dmtcp_restart asserts that every saved file is still at its recorded absolute path.
      await fs.mkdir(filesDir, { recursive: true, mode: 0o700 });
      await fs.cp(path.join(imageDir, filesCopy), filesDir, { recursive: true, force: false });
    }
    const dirs = await this.folders(spec.workDir);
    const env = { ...cleanEnv(spec.env), DMTCP_CHECKPOINT_DIR: dirs.ckpt };
    return this.start(bins, bins.restart, [imagePath], dirs, env, spec.cwd);
  }
}

async function isGzip(file: string): Promise<boolean> {
  const handle = await fs.open(file, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(2), 0, 2, 0);
    return bytesRead === 2 && buffer[0] === 0x1f && buffer[1] === 0x8b;
  } finally {
    await handle.close();
  }
}

/** rename, or copy + unlink across file systems. */
async function moveFile(source: string, target: string): Promise<void> {
  try {
    await fs.rename(source, target);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EXDEV') {
      throw error;
    }
    await fs.copyFile(source, target);
    await fs.unlink(source);
  }
}

// The CRIU engine: the kernel runs as init of its own PID namespace, so that a restore never
// collides with a PID that is taken; CRIU dumps it with --leave-running and restores it as a
// child of `criu restore`, which stays its parent (Node would never reap a re-parented task).
// Every pitfall measured on these machines is in shared/FACTS.md; the flags below answer them.

import { execFile } from 'node:child_process';
import { promises as fs, constants as fsConstants } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import {
  EngineError,
  type Engine,
  type EngineProbe,
  type KernelProcess,
  type LaunchSpec,
  type Snapshot
} from './engine';
import { fdTarget, startPipelineKernel, type PipelineKernel } from './process';
import { underPrivateUmask } from '../store/private-umask';

const run = underPrivateUmask(promisify(execFile)); // images and logs are born private

/** CRIU before 4.2 cannot dump a process holding an AF_INET socket on Linux >= 6.16. */
export const MINIMUM_CRIU_VERSION = [4, 2] as const;

/** Flags both sides need: the kernel may hold TCP connections and flocks. */
const COMMON_FLAGS = ['--tcp-close', '--file-locks'];

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

async function findExecutable(name: string, env: NodeJS.ProcessEnv): Promise<string | null> {
  for (const dir of (env.PATH ?? '').split(path.delimiter).filter(Boolean)) {
    const candidate = path.join(dir, name);
    try {
      await fs.access(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // Not here.
    }
  }
  return null;
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

/** The lines of a CRIU log that say what went wrong. */
async function errorsFromLog(logFile: string): Promise<string> {
  const log = await fs.readFile(logFile, 'utf8').catch(() => '');
  const errors = log
    .split('\n')
    .filter(line => /Error|error|No space|Permission denied/.test(line));
  return (errors.length ? errors : log.split('\n')).slice(-12).join('\n').trim();
}

function classify(detail: string, what: string): EngineError {
  if (/No space left on device|ENOSPC|Disk quota/i.test(detail)) {
    return new EngineError('no_space', `The disk is full: CRIU could not ${what}.`, detail);
  }
  if (
    /Permission denied|Operation not permitted|EPERM|EACCES/.test(detail) &&
    !/rlimit/.test(detail)
  ) {
    return new EngineError('permission_denied', `CRIU was not permitted to ${what}.`, detail);
  }
  const reason = detail.split('\n').filter(Boolean).pop() ?? 'no reason given';
  return new EngineError('engine_failed', `CRIU could not ${what}: ${reason}`, detail);
}

export class CriuEngine implements Engine {
  readonly name = 'criu';
  readonly acceptsConnectionsWhileRestoring = true;
  private probed: Promise<EngineProbe> | null = null;

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
    if (
      configured &&
      !(await fs.access(configured, fsConstants.X_OK).then(
        () => true,
        () => false
      ))
    ) {
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
    let version: number[] | null = null;
    try {
      const { stdout } = await run(found, ['--version'], { timeout: 10000 });
      version = parseVersion(stdout);
    } catch (error) {
      return {
        name: this.name,
        ok: false,
        path: found,
        problem: `${found} does not run: ${(error as Error).message.split('\n')[0]}`,
        remedy
      };
    }
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
    for (const tool of ['unshare', 'setsid']) {
      if (!(await findExecutable(tool, this.env))) {
        return {
          name: this.name,
          ok: false,
          path: found,
          version: versionText,
          problem: `\`${tool}\` (util-linux) is not on PATH.`,
          remedy: 'Install util-linux.'
        };
      }
    }
    return { name: this.name, ok: true, path: found, version: versionText };
  }

  async launch(spec: LaunchSpec): Promise<KernelProcess> {
    await this.criu();
    // init of a new PID namespace, session leader (CRIU dumps a session leader's tree);
    // --kill-child: the kernel dies with its launcher, and so with the supervisor.
    return startPipelineKernel(
      ['unshare', '--pid', '--fork', '--kill-child', 'setsid', ...spec.argv],
      { env: spec.env, cwd: spec.cwd }
    );
  }

  async checkpoint(kernel: KernelProcess, imageDir: string): Promise<Snapshot> {
    const criu = await this.criu();
    const probe = await this.probe();
    // The pipe to the supervisor's log (the launcher's stdout) is the kernel's only pipe to a
    // process outside the image: a restore hands it the new pipeline's pipe in its place.
    // (Its fd 1 and 2 are not it: ipykernel swaps them for pipes of its own, inside the image.)
    const launcher = (kernel as Partial<PipelineKernel>).launcherPid;
    const outputPipe = launcher ? await fdTarget(launcher, 1) : null;
    // Not in the image folder: on a full disk the log must still be writable to say so.
    const logFile = path.join(
      os.tmpdir(),
      `kernel-checkpoint-dump-${process.pid}-${Date.now()}.log`
    );
    const started = Date.now();
    try {
      await run(
        criu,
        [
          'dump',
          '-t',
          String(kernel.pid),
          '-D',
          imageDir,
          '--leave-running',
          ...COMMON_FLAGS,
          '-o',
          logFile
        ],
        { timeout: 600000, maxBuffer: 1 << 20 }
      );
    } catch (error) {
      const detail = (await errorsFromLog(logFile)) || (error as Error).message;
      throw classify(detail, 'snapshot the kernel');
    } finally {
      await fs.rm(logFile, { force: true });
    }
    return {
      version: probe.version ?? 'unknown',
      frozenMs: Date.now() - started,
      data: { outputPipe: outputPipe?.startsWith('pipe:') ? outputPipe : null }
    };
  }

  async restore(
    imageDir: string,
    data: Record<string, unknown>,
    spec: LaunchSpec
  ): Promise<KernelProcess> {
    const criu = await this.criu();
    const logFile = path.join(spec.workDir, `criu-restore-${Date.now()}.log`);
    // The kernel's old stdout/stderr pipe becomes the pipeline's pipe, on criu's fd 3.
    const inherit =
      typeof data.outputPipe === 'string' ? ['--inherit-fd', `fd[3]:${data.outputPipe}`] : [];
    try {
      return await underPrivateUmask(startPipelineKernel)(
        [criu, 'restore', '-D', imageDir, ...COMMON_FLAGS, ...inherit, '-o', logFile, '-v3'],
        { env: spec.env, cwd: spec.cwd, pipeOnFd3: true },
        120000,
        (_launcher, failed) => this.waitForRestored(logFile, failed, spec.answered)
      );
    } catch (error) {
      const detail = (await errorsFromLog(logFile)) || (error as Error).message;
      throw classify(detail, 'restore the image');
    } finally {
      await fs.rm(logFile, { force: true });
    }
  }

  /**
   * `criu restore` forks the kernel early; it is usable once the log says it was resumed. The log
   * is read as it grows (only new bytes), every few milliseconds: at 0 MiB the whole restore takes
   * ~0.1 s, so the poll interval is a visible part of it. Sooner still, when the supervisor
   * connected during the restore: the kernel's first answer (`answered`).
   */
  private async waitForRestored(
    logFile: string,
    failed: () => boolean,
    answered?: Promise<void>
  ): Promise<void> {
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
    try {
      while (Date.now() < deadline) {
        if (running) {
          return;
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
              return;
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

// The fork request: a new standalone kernel started from an image, beside the running one (and
// any other fork of it). It checks the image as a restore does, writes a connection file with
// fresh ports and key into Jupyter's runtime folder, and starts a supervisor of its own for the
// fork (`kernel-checkpoint run --from-image ID`), detached from this one: it lives until a
// client sends it a shutdown_request. Nothing here locks the running kernel (never `busy`).

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promises as fs, openSync, closeSync, existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Readable } from 'node:stream';

import type { Checkpoint } from '../../protocol/checkpoint-protocol';
import { jupyterRuntimeDir } from '../cli/find-kernel';
import { diesWithParent } from '../engines/tools';
import { ForkClient } from './fork-client';
import type { ImageStore } from '../store/store';
import type { KernelIdentity, Progress } from './checkpoint-flow';
import type { KernelHost } from './kernel-host';
import { log } from './log';
import { RequestError } from './request-errors';
import type { RestoreFlow } from './restore-flow';

export interface ForkFlowOptions {
  store: ImageStore;
  kernel: KernelIdentity;
  cwd: string;
  env: NodeJS.ProcessEnv;
}

/** What the fork's supervisor writes on its ready pipe (one JSON line), then closes it. */
export type ForkReadiness = { ready: true } | { error: { code: string; message: string } };

/** How long a fork may take to be restored and answer (a big image takes seconds). */
const FORK_START_TIMEOUT_MS = 600000;

/**
 * How long a stopping supervisor waits for the forks that end with it (each takes ~1 s), counted
 * from the shutdown_request: Jupyter kills a kernel's process 5 s after that request, and this
 * supervisor must still remove the connection files of the forks not yet gone before then.
 */
const OWNED_FORK_END_MS = 3500;

/** Five free TCP ports on 127.0.0.1 (bound, read, released, as jupyter_client does). */
async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<net.Server>((resolve, reject) => {
          const server = net.createServer();
          server.once('error', reject);
          server.listen(0, '127.0.0.1', () => resolve(server));
        })
    )
  );
  const ports = servers.map(server => (server.address() as net.AddressInfo).port);
  await Promise.all(servers.map(server => new Promise(resolve => server.close(resolve))));
  return ports;
}

/** Writes a new kernel's connection file (0600) into Jupyter's runtime folder. */
export async function writeForkConnectionFile(
  env: NodeJS.ProcessEnv,
  kernelName: string
): Promise<string> {
  const dir = jupyterRuntimeDir(env);
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const [shell, iopub, stdin, control, hb] = await freePorts(5);
  const file = path.join(dir, `kernel-${randomUUID()}.json`);
  const connection = {
    shell_port: shell,
    iopub_port: iopub,
    stdin_port: stdin,
    control_port: control,
    hb_port: hb,
    ip: '127.0.0.1',
    key: randomUUID(),
    transport: 'tcp',
    signature_scheme: 'hmac-sha256',
    kernel_name: kernelName
  };
  await fs.writeFile(file, JSON.stringify(connection, null, 1), { mode: 0o600, flag: 'wx' });
  return file;
}

/** Reads the one line of readiness the fork's supervisor writes; null when it closed silently. */
function readReadiness(pipe: Readable): Promise<ForkReadiness | null> {
  return new Promise(resolve => {
    let text = '';
    pipe.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
    pipe.once('close', () => {
      try {
        resolve(JSON.parse(text.split('\n')[0]) as ForkReadiness);
      } catch {
        resolve(null);
      }
    });
  });
}

/**
 * Who ends a fork. `own`: nobody but its user (a fork a user asked for lives on until its
 * shutdown_request). `ended-by-this-supervisor`: the kernel's own forks (`ends_with_kernel`),
 * asked to shut down when this supervisor stops. `dies-with-this-supervisor`: forks the
 * supervisor starts for its own work (a search's), which their flow ends itself. The last two get
 * the parent-death signal, so that they never outlive this supervisor, even killed with -9.
 */
export type ForkLifetime = 'own' | 'ended-by-this-supervisor' | 'dies-with-this-supervisor';

export class ForkFlow {
  /** Connection files of the forks this supervisor ends (`ended-by-this-supervisor`). */
  private readonly owned = new Set<string>();
  private ending: Promise<void> | null = null;

  constructor(
    private readonly options: ForkFlowOptions,
    private readonly host: KernelHost,
    private readonly restoreFlow: RestoreFlow
  ) {}

  /** Starts a fork of image `id` that lives as `lifetime` says. */
  async run(
    id: string,
    progress: Progress,
    lifetime: ForkLifetime = 'own'
  ): Promise<{ checkpoint: Checkpoint; connection_file: string }> {
    const { manifest } = await this.restoreFlow.verify(id, progress);
    const engine = this.host.engine;
    if (!engine.forks) {
      throw new RequestError(
        'engine_unavailable',
        `The ${engine.name} engine cannot start a kernel beside another one restored from the ` +
          'same image; forks need the criu engine.'
      );
    }
    progress('restoring');
    const file = await writeForkConnectionFile(this.options.env, this.options.kernel.name);
    try {
      await this.startSupervisor(id, file, lifetime !== 'own');
      if (lifetime === 'ended-by-this-supervisor') {
        this.owned.add(file);
      }
    } catch (error) {
      await fs.rm(file, { force: true });
      throw error;
    }
    log.info(`forked ${id}: ${file}`);
    return { checkpoint: manifest, connection_file: file };
  }

  /**
   * Ends every fork started `ended-by-this-supervisor` that still runs (its connection file is
   * there: its supervisor removes it on the way out), as this supervisor stops: asked to shut
   * down and waited for (at most OWNED_FORK_END_MS), so that they end as kernels do, connection
   * file and all, before this supervisor's exit sends them the parent-death signal, which is for
   * a supervisor that cannot ask (killed with -9). A fork still ending by then dies of that
   * signal, with no time to remove its connection file, so this supervisor removes it: it wrote
   * it. Every call waits for the same end.
   */
  stop(): Promise<void> {
    this.ending ??= this.endOwned();
    return this.ending;
  }

  private async endOwned(): Promise<void> {
    const running = [...this.owned].filter(file => existsSync(file));
    this.owned.clear();
    await Promise.all(
      running.map(async file => {
        let client: ForkClient;
        try {
          client = new ForkClient(file);
        } catch {
          return; // Gone meanwhile.
        }
        const timeout = new Promise<void>(resolve =>
          setTimeout(resolve, OWNED_FORK_END_MS).unref()
        );
        await Promise.race([client.shutdown(), timeout]);
        client.close();
        if (existsSync(file)) {
          log.warn(
            `a fork did not end within ${OWNED_FORK_END_MS} ms; it ends with this supervisor`
          );
          await fs.rm(file, { force: true });
        }
      })
    );
  }

  /** Starts the fork's own supervisor, detached, and waits until its kernel answers. */
  private async startSupervisor(id: string, file: string, tied: boolean): Promise<void> {
    const { kernel, store, env, cwd } = this.options;
    // The same program as this supervisor (node and the bundle), as a kernelspec runs it.
    const program = [
      ...(tied ? diesWithParent([process.execPath]) : [process.execPath]),
      ...process.execArgv,
      process.argv[1],
      'run',
      '--from-image',
      id,
      '--ready-fd',
      '3',
      '-f',
      file,
      '--engine',
      this.host.engine.name,
      '--store',
      store.location,
      '--kernel-name',
      kernel.name,
      '--display-name',
      kernel.display_name,
      '--language',
      kernel.language
    ];
    // Its log goes where KERNEL_CHECKPOINT_FORK_LOG says, else nowhere: nobody reads its stderr.
    const logFile = env.KERNEL_CHECKPOINT_FORK_LOG;
    const logFd = logFile ? openSync(logFile, 'a', 0o600) : 'ignore';
    // detached: a session of its own, so a signal to this kernel's process group spares it.
    const [command, ...args] = program;
    const child = spawn(command, args, {
      cwd,
      env: { ...env, JPY_SESSION_NAME: '' },
      detached: true,
      stdio: ['ignore', 'ignore', logFd, 'pipe']
    });
    if (typeof logFd === 'number') {
      closeSync(logFd);
    }
    const exited = new Promise<string>(resolve =>
      child.once('exit', (code, signal) => resolve(signal ? `signal ${signal}` : `code ${code}`))
    );
    const spawnFailed = new Promise<string>(resolve =>
      child.once('error', error => resolve(error.message))
    );
    const pipe = child.stdio[3] as Readable;
    const timeout = new Promise<'timeout'>(resolve =>
      setTimeout(() => resolve('timeout'), FORK_START_TIMEOUT_MS).unref()
    );
    const readiness = await Promise.race([readReadiness(pipe), timeout]);
    pipe.destroy();
    child.unref();
    if (readiness && readiness !== 'timeout' && 'ready' in readiness) {
      return;
    }
    if (readiness && readiness !== 'timeout') {
      throw new RequestError(
        readiness.error.code as RequestError['code'],
        `The fork of ${id} did not start: ${readiness.error.message}`
      );
    }
    if (readiness === 'timeout') {
      try {
        process.kill(child.pid ?? 0, 'SIGKILL');
      } catch {
        // Already gone.
      }
      throw new RequestError(
        'engine_failed',
        `The fork of ${id} did not start: its kernel did not answer within ${FORK_START_TIMEOUT_MS / 1000} s.`
      );
    }
    // It closed the pipe without a word: it ended (or never started).
    const how = await Promise.race([exited, spawnFailed]);
    throw new RequestError(
      'engine_failed',
      `The fork of ${id} did not start: its supervisor ended (${how}).`
    );
  }
}

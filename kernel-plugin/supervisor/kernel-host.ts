// The kernel process the supervisor runs now: which engine runs it, its lineage, how it is
// started (plainly when the engine cannot run here), adopted after a restore, connected to by
// the relay and the agent channel, and stopped. The flows replace it; this module holds it.

import { promises as fs } from 'node:fs';

import type { EngineProbe, Engine, KernelExit, KernelProcess } from '../engines/engine';
import { PlainEngine } from '../engines/plain';
import type { ImageStore } from '../store/store';
import type { AgentChannel } from './agent';
import { kernelCommand } from './kernel-setup';
import {
  forkLineage,
  newLineage,
  prepareLineageDir,
  removeLineageDir,
  type Lineage
} from './lineage';
import { log } from './log';
import type { Relay } from './relay';
import { RequestError } from './request-errors';
import type { ConnectionInfo } from './wire';

export interface KernelHostOptions {
  engine: Engine;
  /** The wrapped kernel's argv, as the kernelspec gave it. */
  argv: string[];
  connection: ConnectionInfo;
  connectionFile?: string;
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** Where images go: in object storage, the kernel is started without its credentials. */
  store: Pick<ImageStore, 'remote'>;
}

export class KernelHost {
  kernel: KernelProcess | null = null;
  lineage: Lineage;
  /**
   * Where the supervisor sees a kernel in namespaces of its own (a fork, or any kernel restored
   * under CRIU), whose `lineage` is its image's: its own folder, removed when it stops. Null for
   * a kernel in the supervisor's own namespaces.
   */
  outside: Lineage | null = null;
  /**
   * Folders this supervisor made (or whose kernel it replaced) at an image's ipc path, where its
   * isolated kernel's own folder is mounted; removed once that kernel is gone.
   */
  readonly mountpoints = new Set<string>();
  probe: EngineProbe | null = null;
  /** Whether the kernel process runs the in-kernel plugin (it has an agent endpoint). */
  withPlugin = false;
  /** The image the running kernel process was restored from or last saved into. */
  currentId: string | null = null;
  /** Called when the kernel process exits without being replaced. */
  onExit: (exit: KernelExit) => void = () => undefined;
  /** A flow the kernel's death waits for before it ends the supervisor (`answeringDeath`). */
  private exitWaitsFor: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly options: KernelHostOptions,
    private readonly relay: Relay,
    private readonly agent: AgentChannel
  ) {
    this.lineage = newLineage(options.env, options.connection);
  }

  get engine(): Engine {
    return this.options.engine;
  }

  /** Probes the engine once; a kernel still starts (plainly) when it cannot run. */
  async probeEngine(): Promise<EngineProbe> {
    this.probe = await this.options.engine.probe();
    return this.probe;
  }

  /** Throws engine_unavailable, saying why, when the engine cannot run here. */
  requireEngine(): void {
    if (!this.probe?.ok) {
      throw new RequestError(
        'engine_unavailable',
        `${this.probe?.problem ?? 'The checkpoint engine cannot run here.'} ${this.probe?.remedy ?? ''}`.trim()
      );
    }
  }

  requireKernel(): KernelProcess {
    if (!this.kernel) {
      throw new RequestError('kernel_not_running', 'There is no kernel process to checkpoint.');
    }
    return this.kernel;
  }

  /** Starts a kernel process of the current lineage and connects to it. */
  async launch(): Promise<void> {
    await prepareLineageDir(this.lineage);
    const engineOk = this.probe?.ok === true;
    const command = kernelCommand(
      this.options.argv,
      this.lineage,
      this.options.env,
      this.options.connectionFile,
      engineOk ? (this.options.engine.ipykernelFlags ?? []) : [],
      this.options.store.remote !== null
    );
    const launcher = engineOk ? this.options.engine : new PlainEngine();
    const kernel = await launcher.launch({
      argv: command.argv,
      env: command.env,
      cwd: this.options.cwd,
      workDir: this.lineage.ipcDir
    });
    this.adopt(kernel);
    this.useEndpointsOf(this.lineage, command.withPlugin ? this.lineage.agentEndpoint : null);
    void this.relay.connectKernel(60000);
    this.connectAgent();
  }

  /**
   * Whether a restore runs in namespaces of its own (mount and network, its own folder at the
   * image's ipc folder, as a fork's): always where the engine can, so that a kernel restored
   * from an image never collides with a live kernel of the same lineage (docs/architecture.md).
   * KERNEL_CHECKPOINT_ISOLATE_RESTORE=0 restores in the supervisor's namespaces (to measure).
   */
  get isolatesRestores(): boolean {
    return (
      this.outside !== null ||
      (this.options.engine.forks === true &&
        this.options.env.KERNEL_CHECKPOINT_ISOLATE_RESTORE !== '0')
    );
  }

  /**
   * Where the supervisor reaches a kernel of `lineage`: there, or, restored isolated, through a
   * folder of its own (the one it has, else a new one; the engine then restores it in namespaces
   * of its own: `isolate`).
   */
  reach(lineage: Lineage): Lineage {
    if (this.outside) {
      return forkLineage(lineage, this.options.env, this.outside);
    }
    return this.isolatesRestores ? forkLineage(lineage, this.options.env) : lineage;
  }

  /** Removes the mountpoints this supervisor made, but `keep`: their kernels are gone. */
  async removeMountpoints(keep?: string): Promise<void> {
    for (const dir of Array.from(this.mountpoints)) {
      if (dir !== keep) {
        this.mountpoints.delete(dir);
        await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      }
    }
  }

  /** Starts a fresh kernel of a new lineage (after a failed restore: the old one is gone). */
  async launchFresh(): Promise<void> {
    if (this.outside) {
      // A fresh kernel after an isolated one is an ordinary one, of a lineage of its own.
      await removeLineageDir(this.outside);
      this.outside = null;
    }
    await this.removeMountpoints();
    this.lineage = newLineage(this.options.env, this.options.connection);
    this.currentId = null;
    await this.launch();
  }

  /** Makes `kernel` the running kernel process: its output goes to the log, its exit is watched. */
  adopt(kernel: KernelProcess): void {
    this.kernel = kernel;
    kernel.stdout?.on('data', (chunk: Buffer) => log.kernelOutput(chunk));
    kernel.stderr?.on('data', (chunk: Buffer) => log.kernelOutput(chunk));
    void kernel.exited.then(async exit => {
      // A flow under way ends first, so that its requester hears why (the kernel died).
      await this.exitWaitsFor;
      if (this.kernel !== kernel) {
        return; // Replaced on purpose (restore).
      }
      this.kernel = null;
      this.onExit(exit);
    });
  }

  /**
   * Runs `flow`; a kernel that dies meanwhile ends the supervisor only once `flow` has ended (and
   * its reply, an error saying the kernel died, is on its way).
   */
  async answeringDeath<T>(flow: () => Promise<T>): Promise<T> {
    const running = flow();
    this.exitWaitsFor = running.then(
      () => undefined,
      () => undefined
    );
    return running;
  }

  /** Lets go of the running kernel process, for a flow that replaces it. */
  release(): KernelProcess | null {
    const kernel = this.kernel;
    this.kernel = null;
    return kernel;
  }

  /** Points the relay and the agent channel at a kernel's endpoints. */
  useEndpointsOf(lineage: Lineage, agentEndpoint: string | null): void {
    this.relay.setKernelConnection(lineage.connection);
    this.agent.setEndpoint(agentEndpoint);
    this.withPlugin = agentEndpoint !== null;
  }

  connectAgent(): void {
    if (!this.withPlugin) {
      return;
    }
    this.agent.connect();
    // Introduce ourselves so the plugin may send what it queued while we were away.
    this.agent.send({ type: 'ping' });
  }

  /** Connects to the (resumed or restored) kernel again and waits until its iopub is live. */
  async reconnect(): Promise<void> {
    const live = await this.relay.connectKernel(30000);
    if (!live) {
      log.warn("the kernel's iopub did not answer within 30 s of reconnecting");
    }
    this.connectAgent();
  }

  /** Closes every connection to the kernel; `discard` drops what is unsent (see Relay). */
  disconnect(discard = false): void {
    this.relay.disconnectKernel(discard);
    this.agent.disconnect();
  }

  /** Stops the kernel and the processes around it, and removes its ipc folder. */
  async stop(): Promise<void> {
    const kernel = this.release();
    if (kernel) {
      await kernel.terminate();
      // And the processes around it (a launcher's shell, its output pipe): leave none behind.
      await Promise.race([
        kernel.exited,
        new Promise(resolve => setTimeout(resolve, 2000).unref())
      ]);
    }
    // An isolated kernel's `lineage` folder may be another kernel's: only its own folder, and
    // the mountpoints this supervisor made, are removed.
    await removeLineageDir(this.outside ?? this.lineage);
    await this.removeMountpoints();
  }
}

/** "signal SIGKILL", "code 1": how a kernel process ended, for messages. */
export function exitText(exit: KernelExit): string {
  if (exit.signal) {
    return `signal ${exit.signal}`;
  }
  return exit.code === null ? 'it is gone' : `code ${exit.code}`;
}

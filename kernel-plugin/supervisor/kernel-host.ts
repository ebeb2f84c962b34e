// The kernel process the supervisor runs now: which engine runs it, its lineage, how it is
// started (plainly when the engine cannot run here), adopted after a restore, connected to by
// the relay and the agent channel, and stopped. The flows replace it; this module holds it.

import type { EngineProbe, Engine, KernelExit, KernelProcess } from '../engines/engine';
import { PlainEngine } from '../engines/plain';
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
}

export class KernelHost {
  kernel: KernelProcess | null = null;
  lineage: Lineage;
  /**
   * Where the supervisor sees a fork's kernel, whose `lineage` is its image's (fork.ts): its
   * own folder, removed when it stops. Null for a kernel in the supervisor's own namespaces.
   */
  outside: Lineage | null = null;
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
      engineOk ? (this.options.engine.ipykernelFlags ?? []) : []
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
   * Where the supervisor reaches a kernel of `lineage`: there, or, in a fork, through the fork's
   * own folder (and then the engine restores it in namespaces of its own: `isolate`).
   */
  reach(lineage: Lineage): Lineage {
    return this.outside ? forkLineage(lineage, this.options.env, this.outside) : lineage;
  }

  /** Starts a fresh kernel of a new lineage (after a failed restore: the old one is gone). */
  async launchFresh(): Promise<void> {
    if (this.outside) {
      // A fork's fresh kernel is an ordinary one, of a lineage of its own.
      await removeLineageDir(this.outside);
      this.outside = null;
    }
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
    // A fork's `lineage` folder is the original kernel's: only its own folder is removed.
    await removeLineageDir(this.outside ?? this.lineage);
  }
}

/** "signal SIGKILL", "code 1": how a kernel process ended, for messages. */
export function exitText(exit: KernelExit): string {
  if (exit.signal) {
    return `signal ${exit.signal}`;
  }
  return exit.code === null ? 'it is gone' : `code ${exit.code}`;
}

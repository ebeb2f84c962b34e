// The kernel supervisor: what Jupyter launches as "the kernel". It relays every channel to the
// real kernel process, answers the kernel_checkpoint comm itself, and drives the engine to
// checkpoint and restore that process. See docs/architecture.md for the path of a checkpoint.
//
// This class only wires the parts together and owns their lifetimes; each role is a module:
// relay.ts (the five channels), agent.ts (the plugin's channel), kernel-host.ts (the kernel
// process), kernel-state.ts (what it does), kernel-stand-in.ts (what we answer for it),
// comm-server.ts (the comm), requests.ts (dispatch and locking), checkpoint-flow.ts,
// restore-flow.ts, sealing.ts. It never exits the process: `ended` resolves with the exit code,
// and the command line exits.

import { readFileSync } from 'node:fs';

import type { Request } from '../../protocol/checkpoint-protocol';
import { COMM_TARGET, MARKER_MSG_TYPE } from '../../protocol/checkpoint-protocol-constants';
import type { Engine } from '../engines/engine';
import type { ImageStore } from '../store/store';
import { AgentChannel } from './agent';
import { CheckpointFlow, type KernelIdentity } from './checkpoint-flow';
import { CommServer } from './comm-server';
import { BisectFlow } from './bisect-flow';
import { ForkFlow } from './fork-flow';
import { startFork } from './fork-start';
import { GateMarkers } from './gate-markers';
import { KernelHost } from './kernel-host';
import { KernelStandIn } from './kernel-stand-in';
import { KernelState } from './kernel-state';
import { log } from './log';
import { NotebookIdentity } from './notebook';
import { Relay } from './relay';
import { Requests } from './requests';
import { RestoreFlow } from './restore-flow';
import { Sealer } from './sealing';
import { peekContent, type ConnectionInfo, type Frames, type Header } from './wire';

export { RequestError } from './request-errors';
export type { KernelIdentity } from './checkpoint-flow';

/**
 * How long a kernel may take to end after its shutdown_request before the supervisor stops it.
 * Jupyter kills a kernel it launched 5 s after that request, but nobody does so for a fork
 * (`kernel-checkpoint run --from-image`), and a kernel stuck in its exit (an atexit handler, a
 * thread that never ends) would outlive the request; shorter than Jupyter's 5 s, so that the
 * supervisor, not Jupyter's kill, ends it and cleans up.
 */
export const SHUTDOWN_GRACE_MS = 3000;

export interface SupervisorOptions {
  connection: ConnectionInfo;
  connectionFile?: string;
  argv: string[];
  engine: Engine;
  store: ImageStore;
  kernel: KernelIdentity;
  notebookPath: string | null;
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** How long pre-checkpoint hooks may take. */
  prepareTimeoutMs?: number;
}

export class Supervisor {
  private readonly relay: Relay;
  private readonly agent: AgentChannel;
  readonly host: KernelHost;
  readonly requests: Requests;
  private readonly state = new KernelState();
  private readonly markers = new GateMarkers();
  private readonly standIn: KernelStandIn;
  private readonly comms: CommServer;
  private readonly restoreFlow: RestoreFlow;
  private readonly sealer: Sealer;
  private readonly bisectFlow: BisectFlow;
  private readonly forkFlow: ForkFlow;
  private readonly options: SupervisorOptions;
  private shuttingDown = false;
  private shutdownDeadline: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | null = null;
  private endWith: (code: number) => void = () => undefined;
  /** Resolves with the exit code once the supervisor has stopped the kernel and closed up. */
  readonly ended = new Promise<number>(resolve => (this.endWith = resolve));

  constructor(options: SupervisorOptions) {
    this.options = options;
    this.relay = new Relay(options.connection, options.connection, {
      onClientRequest: (channel, frames, header) => this.onClientRequest(channel, frames, header),
      onKernelIopub: (frames, msgType) => this.onKernelIopub(frames, msgType)
    });
    this.agent = new AgentChannel(null, request =>
      this.requests.handle(request, message => this.agent.send(message), true)
    );
    this.host = new KernelHost(options, this.relay, this.agent);
    this.relay.setKernelConnection(this.host.lineage.connection);
    this.host.onExit = exit => {
      if (this.shuttingDown) {
        log.info('the kernel shut down');
        void this.stop(0);
      } else {
        log.error(`the kernel exited unexpectedly (code ${exit.code}, signal ${exit.signal})`);
        void this.stop(1);
      }
    };
    this.standIn = new KernelStandIn(this.relay, this.state, () => this.interruptKernel());
    this.comms = new CommServer(
      this.relay,
      () => this.state.idle && !this.requests.busy,
      () => this.requests.status()
    );
    const sealer = (this.sealer = new Sealer(options.store));
    const notebook = new NotebookIdentity(options.notebookPath);
    const checkpointFlow = new CheckpointFlow(
      { ...options, notebook },
      this.host,
      this.relay,
      this.agent,
      this.markers,
      this.comms,
      sealer
    );
    const restoreFlow = (this.restoreFlow = new RestoreFlow(
      options,
      this.host,
      this.relay,
      this.agent,
      this.state,
      this.standIn,
      this.comms
    ));
    checkpointFlow.rewind = (cause, exit, progress) => restoreFlow.rewind(cause, exit, progress);
    const forkFlow = new ForkFlow(options, this.host, restoreFlow);
    this.forkFlow = forkFlow;
    this.bisectFlow = new BisectFlow(options.store, this.host, forkFlow);
    this.requests = new Requests(
      { store: options.store, kernelName: options.kernel.name, notebook },
      this.host,
      this.relay,
      this.agent,
      this.comms,
      sealer,
      checkpointFlow,
      restoreFlow,
      forkFlow,
      this.bisectFlow
    );
    // A store in object storage: every open timeline follows each checkpoint's upload.
    options.store.remote?.uploader.onChange((id, upload) => {
      void options.store.manifest(id).then(
        manifest =>
          this.comms.broadcast({
            type: 'event',
            event: 'upload',
            checkpoint: { ...manifest, upload },
            checkpoint_id: id,
            current_id: this.host.currentId
          }),
        () => undefined
      );
    });
    this.requests.onIdle = () => {
      if (this.shuttingDown && !this.host.kernel) {
        void this.stop(0);
      }
    };
  }

  /**
   * Binds Jupyter's ports and starts the kernel under the engine (plainly if it cannot run), or,
   * for a fork, from image `fromImage` beside the kernels already restored from it.
   */
  async start(fromImage?: string): Promise<void> {
    const probe = await this.host.probeEngine();
    if (!probe.ok) {
      log.warn(
        `${probe.problem} The kernel runs, but cannot be checkpointed. ${probe.remedy ?? ''}`
      );
    }
    await this.relay.bindFront();
    if (fromImage) {
      await startFork(fromImage, this.options, this.host, this.relay, this.agent, this.restoreFlow);
    } else {
      await this.host.launch();
    }
    // Once the kernel runs: whole images left from before chunking was on become chunk images.
    this.sealer.migrate(stored =>
      this.comms.broadcast({
        type: 'event',
        event: 'stored',
        checkpoint: stored,
        checkpoint_id: stored.id,
        current_id: this.host.currentId
      })
    );
  }

  /** Stops the kernel and closes every socket; `ended` then resolves with `code`. */
  stop(code: number): Promise<void> {
    clearTimeout(this.shutdownDeadline);
    this.stopping ??= (async () => {
      try {
        // A search's forks and the kernel's own first: nothing the supervisor started outlives it.
        await Promise.all([this.bisectFlow.stop(), this.forkFlow.stop()]);
        await this.host.stop();
        // Uploads not done stay in the cache, sent by the next supervisor that opens it.
        this.options.store.remote?.uploader.stop();
        this.relay.close();
        this.agent.disconnect();
      } finally {
        // Whatever failed while closing up, the supervisor has ended.
        this.endWith(code);
      }
    })();
    return this.stopping;
  }

  /** Whether the kernel process is idle, as its iopub said last. */
  get kernelIdle(): boolean {
    return this.state.idle;
  }

  interruptKernel(): void {
    this.host.kernel?.signal('SIGINT');
  }

  /** Handles a request as if it came on a comm, answering through `send` (for tests). */
  handleRequest(request: Request, send: Parameters<Requests['handle']>[1]): void {
    void this.requests.handle(request, send);
  }

  // ---- messages from clients -------------------------------------------------------------

  /** Takes the client messages that are for the supervisor; true when it answered one. */
  private onClientRequest(
    channel: 'shell' | 'control' | 'stdin',
    frames: Frames,
    header: Header
  ): boolean {
    const type = header.msg_type;
    if (type === 'shutdown_request') {
      this.shuttingDown = true;
      this.shutdownDeadline ??= setTimeout(() => {
        if (this.stopping) {
          return;
        }
        log.warn(
          `the kernel did not end within ${SHUTDOWN_GRACE_MS / 1000} s of its shutdown_request; ` +
            'stopping it'
        );
        void this.stop(0);
      }, SHUTDOWN_GRACE_MS).unref();
      // Jupyter kills a kernel's process 5 s after its shutdown_request (and with it, through
      // the parent-death signal, a fork still ending): the kernel's own forks end beside its
      // shutdown, not after it.
      void this.forkFlow.stop();
      if (!this.host.kernel && !this.requests.busy) {
        void this.stop(0);
      }
      return false;
    }
    if (type === 'kernel_info_request' && channel !== 'stdin') {
      return this.standIn.kernelInfo(channel, frames, header);
    }
    if (channel === 'control' && type === 'interrupt_request') {
      this.standIn.interruptRequest(frames, header);
      return true;
    }
    if (channel !== 'shell' || !type.startsWith('comm_')) {
      return false;
    }
    let content: Record<string, any>;
    try {
      content = peekContent(frames);
    } catch {
      return false;
    }
    if (type === 'comm_open' && content.target_name === COMM_TARGET) {
      this.comms.open(content, header);
      return true;
    }
    const commId = content.comm_id as string;
    if (!this.comms.has(commId)) {
      return false;
    }
    if (type === 'comm_close') {
      this.comms.close(commId);
    } else if (type === 'comm_msg') {
      this.comms.withStatus(header, () =>
        this.requests.handle(content.data as Request, message =>
          this.comms.send(commId, message, header)
        )
      );
    }
    return true;
  }

  // ---- messages from the kernel ----------------------------------------------------------

  /** Every message the kernel publishes passes, but the gate's markers. */
  private onKernelIopub(frames: Frames, msgType: string): boolean {
    if (msgType === MARKER_MSG_TYPE) {
      this.markers.arrived(frames);
      return false;
    }
    this.state.observe(frames, msgType);
    return true;
  }
}

/** Reads and checks a connection file. */
export function readConnectionFile(file: string): ConnectionInfo {
  const info = JSON.parse(readFileSync(file, 'utf8')) as ConnectionInfo;
  for (const field of [
    'shell_port',
    'iopub_port',
    'stdin_port',
    'control_port',
    'hb_port',
    'ip',
    'key'
  ] as const) {
    if (info[field] === undefined) {
      throw new Error(`connection file ${file} has no ${field}`);
    }
  }
  info.transport ??= 'tcp';
  info.signature_scheme ??= 'hmac-sha256';
  return info;
}

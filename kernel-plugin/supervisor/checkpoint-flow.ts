// The checkpoint flow, one named step per progress stage of the protocol:
//
//   preparing    the plugin runs the before-checkpoint hooks, reports the state summary and
//                closes its gate (a veto ends the flow here);
//   quiescing    client messages are held, the gate's marker awaited, every socket to the kernel
//                closed, and the kernel seen to let go of them;
//   snapshotting the engine dumps the process into the pending image;
//   resuming     the supervisor reconnects, the plugin hears `resumed` (or `aborted`), and the
//                held messages go on; this step runs whether or not the snapshot succeeded;
//   saving       the image's records are written and it is renamed into place.
//
// On any failure the pending image is discarded: no half image is ever seen.

import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

import type {
  AgentCommand,
  Checkpoint,
  ProgressStage,
  Request,
  StateSummary
} from '../../protocol/checkpoint-protocol';
import { MANIFEST_FORMAT } from '../../protocol/checkpoint-protocol-constants';
import {
  EngineKilled,
  type KernelExit,
  type KernelProcess,
  type Snapshot
} from '../engines/engine';
import { newCheckpointId, type ImageStore, type PendingImage } from '../store/store';
import { AgentTimeout, type AgentChannel } from './agent';
import type { CommServer } from './comm-server';
import type { GateMarkers } from './gate-markers';
import { exitText, type KernelHost } from './kernel-host';
import { log } from './log';
import type { NotebookIdentity } from './notebook';
import type { Relay } from './relay';
import { asRequestError, RequestError } from './request-errors';
import type { Sealer } from './sealing';
import { acceptedConnections, waitForKernelToLetGo } from './sockets';

/** Names the kernel in every manifest. */
export type KernelIdentity = Checkpoint['kernel'];

export type Progress = (stage: ProgressStage, message?: string) => void;

/** How long client messages wait for the plugin's resume or restart hooks. */
const HOOKS_TIMEOUT_MS = 30000;

/**
 * Tells the plugin `command` (resumed, restarted) and waits until its hooks have run
 * (`hooks_done`) before client messages go on: a cell sent after the reply must find what a
 * hook reopened (a file, a database), and the plugin runs the hooks from its own thread, which
 * may hear the command after the kernel's shell heard the cell. A kernel running a cell runs
 * them within ~1 s (_agent.py: after the cell, or from the agent's thread).
 */
export async function tellAndAwaitHooks(
  agent: AgentChannel,
  command: AgentCommand & { type: 'resumed' | 'restarted' }
): Promise<void> {
  try {
    const done = await agent.ask(command, 'hooks_done', HOOKS_TIMEOUT_MS);
    for (const hookError of done.hook_errors ?? []) {
      log.warn(`${command.type} hook failed: ${hookError}`);
    }
  } catch (error) {
    if (!(error instanceof AgentTimeout)) {
      throw error;
    }
    log.warn(`${error.message}; client messages go on without waiting for the hooks`);
  }
}

export interface CheckpointFlowOptions {
  store: ImageStore;
  kernel: KernelIdentity;
  notebook: NotebookIdentity;
  /** How long pre-checkpoint hooks may take. */
  prepareTimeoutMs?: number;
}

/** The kernel process exited in the middle of a checkpoint: none was made. */
class KernelDied extends RequestError {
  constructor(readonly exit: KernelExit) {
    super(
      'kernel_not_running',
      `The kernel process exited during the checkpoint (${exitText(exit)}); no checkpoint was made.`
    );
  }
}

/** What `prepare` learnt: whether the plugin closed its gate, and its state summary. */
interface Prepared {
  gated: boolean;
  summary: StateSummary | null;
}

/**
 * Brings the kernel back after it died with its killed engine (`cause`): from the image it came
 * from (RestoreFlow.rewind); resolves with the error for the checkpoint's requester.
 */
export type Rewind = (cause: RequestError, exit: KernelExit, progress: Progress) => Promise<Error>;

export class CheckpointFlow {
  /** Set by the supervisor: without it, a kernel killed with its engine ends the supervisor. */
  rewind: Rewind | null = null;

  constructor(
    private readonly options: CheckpointFlowOptions,
    private readonly host: KernelHost,
    private readonly relay: Relay,
    private readonly agent: AgentChannel,
    private readonly markers: GateMarkers,
    private readonly comms: CommServer,
    private readonly sealer: Sealer
  ) {}

  async run(request: Request, progress: Progress): Promise<Checkpoint> {
    this.host.requireEngine();
    const kernel = this.host.requireKernel();
    return this.host.answeringDeath(() => this.checkpoint(request, progress, kernel));
  }

  private async checkpoint(
    request: Request,
    progress: Progress,
    kernel: KernelProcess
  ): Promise<Checkpoint> {
    const started = Date.now();
    const id = newCheckpointId();
    const label = request.label ?? null;
    const pending = await this.options.store.begin(id);
    // A kernel that dies ends the checkpoint at once, whatever step waits on it.
    const died = kernel.exited.then(exit => {
      throw new KernelDied(exit);
    });
    died.catch(() => undefined);
    try {
      progress('preparing');
      const prepared = await Promise.race([this.prepare(id, label), died]);
      let snapshot: Snapshot;
      let snapshotting: Promise<Snapshot> | null = null;
      try {
        progress('quiescing');
        await Promise.race([this.quiesce(kernel, id, prepared.gated), died]);
        progress('snapshotting');
        snapshotting = this.host.engine.checkpoint(kernel, pending.imageDir);
        snapshot = await Promise.race([snapshotting, died]);
      } catch (error) {
        // How the engine ended, when the kernel died first: it stops writing into the pending
        // image before it is removed.
        const engineEnd =
          error instanceof KernelDied
            ? await Promise.race([
                snapshotting?.then(
                  () => null,
                  (end: unknown) => end
                ),
                sleep(5000)
              ])
            : error;
        try {
          if (error instanceof KernelDied) {
            throw error;
          }
          await Promise.race([this.resume(id, prepared.gated, error, progress), died]);
        } catch (death) {
          if (death instanceof KernelDied && engineEnd instanceof EngineKilled && this.rewind) {
            throw await this.rewind(asRequestError(engineEnd), death.exit, progress);
          }
          throw death;
        }
        throw error;
      }
      try {
        await Promise.race([this.resume(id, prepared.gated, null, progress), died]);
      } catch (error) {
        if (!(error instanceof KernelDied)) {
          throw error;
        }
        // The snapshot was taken before the kernel died: the image is whole, and kept.
        log.warn(`the kernel process exited after its snapshot (${exitText(error.exit)})`);
      }
      progress('saving');
      return await this.save(id, request, started, snapshot, prepared.summary, pending);
    } catch (error) {
      await pending.discard();
      // A veto ends the flow before anything was held: let the shell requests go.
      this.relay.resume();
      throw error;
    }
  }

  /** Asks the plugin to run its hooks and close its gate; a kernel without it goes on as it is. */
  private async prepare(id: string, label: string | null): Promise<Prepared> {
    if (!(this.agent.connected && this.agent.present)) {
      return { gated: false, summary: null };
    }
    let prepared;
    try {
      prepared = await this.agent.ask(
        { type: 'prepare', checkpoint_id: id, label },
        'prepared',
        this.options.prepareTimeoutMs ?? 120000
      );
    } catch (error) {
      if (!(error instanceof AgentTimeout)) {
        throw error;
      }
      log.warn(`${error.message}; checkpointing without hooks and state summary`);
      return { gated: false, summary: null };
    }
    if (prepared.veto) {
      throw new RequestError(
        'vetoed',
        `A pre-checkpoint hook refused the checkpoint: ${prepared.veto}`
      );
    }
    for (const hookError of prepared.hook_errors ?? []) {
      log.warn(`pre-checkpoint hook failed: ${hookError}`);
    }
    return { gated: true, summary: prepared.summary ?? null };
  }

  /** Holds client messages and leaves the kernel with no connection to any outside process. */
  private async quiesce(kernel: KernelProcess, id: string, gated: boolean): Promise<void> {
    this.relay.pause();
    if (gated) {
      await this.markers.waitFor(id, 10000);
    }
    const ipcDir = this.host.lineage.ipcDir;
    const closed = {
      acceptedBefore: acceptedConnections(ipcDir, kernel.pid),
      closed: this.relay.kernelConnections + (this.agent.connected ? 1 : 0)
    };
    this.host.disconnect();
    await waitForKernelToLetGo(ipcDir, kernel.pid, 10000, closed);
  }

  /**
   * Connects to the kernel again (if it was let go), tells the plugin whether the snapshot was
   * taken (it opens its gate either way), and relays the held messages.
   */
  private async resume(
    id: string,
    gated: boolean,
    failure: unknown,
    progress: Progress
  ): Promise<void> {
    progress('resuming');
    if (!this.relay.kernelConnected && this.host.kernel) {
      await this.host.reconnect();
    }
    if (gated) {
      const error = failure === null ? null : asRequestError(failure);
      if (error) {
        this.agent.send({
          type: 'aborted',
          checkpoint_id: id,
          error: { code: error.code, message: error.message }
        });
      } else {
        await tellAndAwaitHooks(this.agent, { type: 'resumed', checkpoint_id: id });
      }
    }
    this.relay.resume();
  }

  /** Writes the image's records, puts it in place, seals it in the background, tells everyone. */
  private async save(
    id: string,
    request: Request,
    started: number,
    snapshot: Snapshot,
    summary: StateSummary | null,
    pending: PendingImage
  ): Promise<Checkpoint> {
    const engine = this.host.engine;
    const lineage = this.host.lineage;
    const manifest: Checkpoint = {
      format: MANIFEST_FORMAT,
      id,
      parent_id: this.host.currentId,
      label: request.label ?? null,
      created: new Date(started).toISOString(),
      engine: { name: engine.name, version: snapshot.version },
      duration_ms: 0,
      snapshot_ms: snapshot.frozenMs,
      image_bytes: 0,
      kernel: this.options.kernel,
      ...this.options.notebook.fields(request),
      host: { hostname: os.hostname(), arch: process.arch, kernel_release: os.release() },
      state: summary
    };
    manifest.duration_ms = Date.now() - started;
    const saved = await pending.commit(manifest, {
      format: MANIFEST_FORMAT,
      engine: engine.name,
      engineData: snapshot.data,
      kernelConnection: lineage.connection as unknown as Record<string, unknown>,
      ipcDir: lineage.ipcDir,
      agentEndpoint: this.host.withPlugin ? lineage.agentEndpoint : null,
      lineage: lineage.id,
      arch: process.arch
    });
    this.host.currentId = id;
    // Once chunked, every client's list shows the checkpoint's new bytes.
    this.sealer.seal(id, stored =>
      this.comms.broadcast({
        type: 'event',
        event: 'stored',
        checkpoint: stored,
        checkpoint_id: id,
        current_id: this.host.currentId
      })
    );
    log.info(`checkpoint ${id}: ${saved.image_bytes} bytes in ${Date.now() - started} ms`);
    this.comms.broadcast({
      type: 'event',
      event: 'created',
      checkpoint: saved,
      checkpoint_id: id,
      current_id: id
    });
    return saved;
  }
}

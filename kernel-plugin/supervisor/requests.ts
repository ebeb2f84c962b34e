// Requests of the kernel_checkpoint protocol, from a comm, the command line, or the in-kernel
// plugin: checked, dispatched, answered (never thrown: a failure becomes an ErrorReply), with
// one checkpoint, restore or delete at a time (another is refused as busy).

import type {
  Action,
  BisectResult,
  Checkpoint,
  Request,
  StateSummary,
  SupervisorMessage,
  SupervisorStatus
} from '../../protocol/checkpoint-protocol';
import { ACTIONS, PROTOCOL_VERSION } from '../../protocol/checkpoint-protocol-constants';
import type { ImageStore } from '../store/store';
import type { AgentChannel } from './agent';
import type { BisectFlow } from './bisect-flow';
import type { CheckpointFlow, Progress } from './checkpoint-flow';
import type { CommServer } from './comm-server';
import type { ForkFlow } from './fork-flow';
import type { KernelHost } from './kernel-host';
import { log } from './log';
import type { Relay } from './relay';
import { asRequestError, errorMessage, RequestError } from './request-errors';
import type { NotebookIdentity } from './notebook';
import type { RestoreFlow } from './restore-flow';
import type { Sealer } from './sealing';

/** Where the answers to one request go. */
export type Sink = (message: SupervisorMessage) => void;

export interface RequestsOptions {
  store: ImageStore;
  kernelName: string;
  notebook: NotebookIdentity;
}

type Result = {
  checkpoint?: Checkpoint;
  checkpoints?: Checkpoint[];
  status?: SupervisorStatus;
  notebook_id?: string;
  connection_file?: string;
  summary?: StateSummary | null;
  bisect?: BisectResult;
};

/** How long the plugin may take to describe the kernel's variables (it reads no data). */
const SUMMARY_TIMEOUT_MS = 10000;

/** How long sealing waits, after a restore, for the restored kernel's memory to be back. */
const SEALING_WAITS_MS = 10000;

export class Requests {
  /** The checkpoint, restore or delete under way. */
  busy: Action | null = null;
  /** Called when an exclusive request has ended (the supervisor may be waiting to leave). */
  onIdle: () => void = () => undefined;

  constructor(
    private readonly options: RequestsOptions,
    private readonly host: KernelHost,
    private readonly relay: Relay,
    private readonly agent: AgentChannel,
    private readonly comms: CommServer,
    private readonly sealer: Sealer,
    private readonly checkpointFlow: CheckpointFlow,
    private readonly restoreFlow: RestoreFlow,
    private readonly forkFlow?: ForkFlow,
    private readonly bisectFlow?: BisectFlow
  ) {}

  status(): SupervisorStatus {
    const probe = this.host.probe;
    const engine = { name: this.host.engine.name, version: probe?.version ?? 'unknown' };
    return {
      protocol_version: PROTOCOL_VERSION,
      engine,
      engine_ok: probe?.ok ?? false,
      ...(probe?.ok
        ? {}
        : {
            engine_problem: `${probe?.problem ?? 'unknown'} ${probe?.remedy ?? ''}`.trim()
          }),
      current_id: this.host.currentId,
      kernel_name: this.options.kernelName,
      notebook_path: this.options.notebook.currentPath,
      busy: this.busy,
      plugin: this.agent.present,
      store: this.options.store.location,
      ...(this.options.store.remote ? { upload: this.options.store.remote.status() } : {})
    };
  }

  /** Handles one request; never throws: failures become an ErrorReply. Settles once answered. */
  handle(request: Request, send: Sink, fromKernel = false): Promise<void> {
    const requestId = typeof request?.request_id === 'string' ? request.request_id : '';
    const action = request?.action;
    if (!requestId || !ACTIONS.includes(action)) {
      send(
        errorMessage(
          requestId,
          String(action ?? ''),
          new RequestError(
            'invalid_request',
            `Not a kernel_checkpoint request: it needs a request_id and an action (one of ${ACTIONS.join(', ')}).`
          )
        )
      );
      return Promise.resolve();
    }
    const progress: Progress = (stage, message) =>
      send({
        type: 'progress',
        request_id: requestId,
        action,
        stage,
        ...(message ? { message } : {})
      });
    return this.perform(request, progress, fromKernel)
      .then(result =>
        send({
          type: 'reply',
          request_id: requestId,
          action,
          current_id: this.host.currentId,
          ...result
        })
      )
      .catch(error => {
        const failure = asRequestError(error);
        log.warn(
          `${action} failed: ${failure.code}: ${failure.message}${failure.detail ? `\n${failure.detail}` : ''}`
        );
        send(errorMessage(requestId, action, failure));
      });
  }

  private async perform(
    request: Request,
    progress: Progress,
    fromKernel: boolean
  ): Promise<Result> {
    this.options.notebook.learn(request);
    switch (request.action) {
      case 'status':
        return { status: this.status() };
      case 'list':
        return await this.list(request);
      case 'label':
        return { checkpoint: await this.label(requireId(request), request.label ?? null) };
      case 'delete':
        return this.exclusive('delete', async () => ({
          checkpoint: await this.delete(requireId(request))
        }));
      case 'checkpoint':
        return this.exclusive('checkpoint', async () => {
          const checkpoint = await this.checkpointFlow.run(request, progress);
          this.restoreFlow.markUnchanged();
          return { checkpoint };
        });
      case 'restore':
        return this.exclusive('restore', async () => {
          const id = requireId(request);
          const keep = (target: Checkpoint) => this.keepBeforeRestore(target, request, progress);
          return { checkpoint: await this.restoreFlow.run(id, progress, fromKernel, keep) };
        });
      case 'summary':
        return { summary: await this.liveSummary() };
      case 'fork':
        // Not exclusive: a fork leaves the running kernel alone.
        if (!this.forkFlow) {
          break;
        }
        return this.forkFlow.run(
          requireId(request),
          progress,
          request.ends_with_kernel === true ? 'ended-by-this-supervisor' : 'own'
        );
      case 'bisect':
        // Not exclusive either: it only forks, and the running kernel goes on meanwhile.
        if (!this.bisectFlow) {
          break;
        }
        return this.bisectFlow.run(request, progress);
    }
    throw new RequestError('invalid_request', `Unknown action ${JSON.stringify(request.action)}.`);
  }

  /**
   * The running kernel's state summary, from the plugin's agent thread: it runs no code in the
   * kernel and takes nothing from it (not an execution count, not the cells the next checkpoint
   * records), so it answers while a cell runs too. A checkpoint or restore holds the kernel
   * (frozen, or being replaced): then it is busy. Null without the plugin.
   */
  private async liveSummary(): Promise<StateSummary | null> {
    const holding = this.holdingKernel();
    if (holding) {
      throw new RequestError(
        'busy',
        `A ${holding} is under way; the kernel's state can be read when it has finished.`
      );
    }
    this.host.requireKernel();
    if (!this.host.withPlugin) {
      return null;
    }
    try {
      const report = await this.agent.ask({ type: 'summary' }, 'summary', SUMMARY_TIMEOUT_MS);
      return report.summary ?? null;
    } catch (error) {
      const began = this.holdingKernel();
      if (began) {
        throw new RequestError('busy', `A ${began} began before the kernel's state was read.`);
      }
      throw new RequestError(
        'engine_failed',
        `The kernel plugin did not describe the kernel's state: ${(error as Error).message}.`
      );
    }
  }

  /** The checkpoint or restore that holds the kernel (frozen, or being replaced), if any. */
  private holdingKernel(): Action | null {
    return this.busy === 'checkpoint' || this.busy === 'restore' ? this.busy : null;
  }

  /**
   * Runs one checkpoint, restore or delete at a time. Shell requests sent after a checkpoint or
   * restore request wait for it (see Relay.holdShell); sealing pauses meanwhile.
   */
  private async exclusive<T>(action: Action, body: () => Promise<T>): Promise<T> {
    if (this.busy) {
      throw new RequestError(
        'busy',
        `Another ${this.busy} is under way; try again when it has finished.`
      );
    }
    this.busy = action;
    if (action !== 'delete') {
      this.relay.holdShell();
    }
    this.comms.broadcast({ type: 'event', event: 'busy', action, current_id: this.host.currentId });
    // A delete waits for its image's seal, so only checkpoints and restores pause sealing.
    const releaseSealing =
      action === 'delete' ? () => undefined : this.options.store.background.hold();
    try {
      return await body();
    } finally {
      this.releaseAfterRestore(action, releaseSealing);
      this.relay.releaseShell();
      this.busy = null;
      this.comms.broadcast({
        type: 'event',
        event: 'idle',
        action,
        current_id: this.host.currentId
      });
      this.onIdle();
    }
  }

  /**
   * Lets sealing go on: after a restore, once the restored kernel has its memory back. On two
   * cores, checksumming the image just written (0.6-1.3 s at 1 GiB) beside a lazily restored
   * kernel's first faults took restore → first cell of 1 GiB from 0.31 to 0.41 s
   * (bench/README.md, "LAZY RESTORE").
   */
  private releaseAfterRestore(action: Action, release: () => void): void {
    const kernel = this.host.kernel;
    if (action !== 'restore' || !kernel || !this.host.engine.untilMemoryBack) {
      release();
      return;
    }
    // At most this long: a delete waits for its image's seal, and a kernel reading all its
    // memory while it arrives can take tens of seconds to have every page (4 GiB: 5-44 s).
    const longest = new Promise<void>(resolve => setTimeout(resolve, SEALING_WAITS_MS).unref());
    void Promise.race([this.host.engine.untilMemoryBack(kernel), longest]).finally(release);
  }

  /**
   * Before a restore replaces the running kernel, keeps its state as a checkpoint of its own
   * (labelled "before restoring ..."), so that going back is never a loss and can be undone; it
   * runs once the target image is checked, so a restore that cannot happen keeps nothing. Only
   * when the kernel ran a cell since its current checkpoint (else that checkpoint is its state),
   * when it can be checkpointed, and unless KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE=0. With the
   * chunk store it costs its new bytes only. If it fails (a full disk), the restore goes on and
   * its progress says so.
   */
  private async keepBeforeRestore(
    target: Checkpoint,
    request: Request,
    progress: Progress
  ): Promise<void> {
    if (
      !this.restoreFlow.worthKeeping ||
      !this.host.kernel ||
      !this.host.probe?.ok ||
      this.host.engine.name === 'plain'
    ) {
      return;
    }
    const id = target.id;
    try {
      await this.checkpointFlow.run(
        {
          request_id: request.request_id,
          action: 'checkpoint',
          label: `before restoring ${target.label ?? id}`,
          ...(request.notebook_path ? { notebook_path: request.notebook_path } : {})
        },
        progress
      );
      this.restoreFlow.markUnchanged();
    } catch (error) {
      // The user asked to go back: a full disk must not keep them from it. They hear of it.
      const failure = asRequestError(error);
      log.warn(
        `could not keep the running kernel's state before restoring ${id}: ${failure.message}`
      );
      progress('verifying', `the running kernel's state was not kept: ${failure.message}`);
    }
  }

  private async list(request: Request): Promise<Result> {
    const all = await this.options.store.list();
    // A client that names no id learns the notebook's (see NotebookIdentity.idFor).
    const found = this.options.notebook.idFor(request, all);
    const named = found ? { ...request, notebook_id: found } : request;
    const reply = (checkpoints: Checkpoint[]): Result =>
      found ? { checkpoints, notebook_id: found } : { checkpoints };
    if (request.scope === 'all') {
      return reply(all);
    }
    // This notebook's images, and the tree the running kernel belongs to.
    const byId = new Map(all.map(c => [c.id, c]));
    const rootOf = (c: Checkpoint): string => {
      const seen = new Set<string>();
      while (c.parent_id && byId.has(c.parent_id) && !seen.has(c.id)) {
        seen.add(c.id);
        c = byId.get(c.parent_id)!;
      }
      return c.id;
    };
    const current = this.host.currentId ? byId.get(this.host.currentId) : undefined;
    const ourRoot = current ? rootOf(current) : null;
    return reply(
      all.filter(
        c => this.options.notebook.owns(c, named) || (ourRoot !== null && rootOf(c) === ourRoot)
      )
    );
  }

  private async label(id: string, label: string | null): Promise<Checkpoint> {
    const checkpoint = await this.options.store.relabel(id, label);
    this.comms.broadcast({
      type: 'event',
      event: 'labelled',
      checkpoint,
      checkpoint_id: id,
      current_id: this.host.currentId
    });
    return checkpoint;
  }

  private async delete(id: string): Promise<Checkpoint> {
    const checkpoint = await this.options.store.entry(id);
    await this.sealer.settled(id);
    await this.options.store.delete(id);
    // Its chunks no other image uses are given back in the background.
    void this.options.store
      .collect()
      .then(freed => log.debug(`collected ${freed.packsRemoved} packs, ${freed.bytesFreed} bytes`))
      .catch(error => log.warn(`could not collect unused chunks: ${(error as Error).message}`));
    if (this.host.currentId === id) {
      this.host.currentId = checkpoint.parent_id;
    }
    this.comms.broadcast({
      type: 'event',
      event: 'deleted',
      checkpoint_id: id,
      current_id: this.host.currentId
    });
    return checkpoint;
  }
}

function requireId(request: Request): string {
  if (typeof request.checkpoint_id !== 'string' || !request.checkpoint_id) {
    throw new RequestError('invalid_request', `${request.action} needs a checkpoint_id.`);
  }
  return request.checkpoint_id;
}

// The restore flow, one named step per progress stage of the protocol:
//
//   verifying    the image is known, of this engine and architecture, and whole (sizes, and
//                checksums once sealed); a chunk image's files are rebuilt, every chunk checked
//                against its hash; nothing has changed yet if this fails;
//   stopping     client messages are held and the running kernel process is stopped;
//   restoring    the engine starts the kernel from the image (if it fails, a fresh kernel is
//                started and the error says so: the old one is gone);
//   reconnecting the supervisor connects, the plugin hears `restarted`, held messages go on.

import type { Checkpoint } from '../../protocol/checkpoint-protocol';
import { stopCauses, type KernelExit, type KernelProcess } from '../engines/engine';
import { keepsBeforeRestore } from '../store/chunked-images';
import { SERVE_PAGES_SETTING, stageTimer } from '../store/page-source';
import type { ImageStore, OpenedImage, PrivateRecord } from '../store/store';
import type { AgentChannel } from './agent';
import { tellAndAwaitHooks, type Progress } from './checkpoint-flow';
import type { CommServer } from './comm-server';
import { exitText, type KernelHost } from './kernel-host';
import type { KernelStandIn } from './kernel-stand-in';
import type { KernelState } from './kernel-state';
import {
  lineageIsLive,
  makeMountpoint,
  prepareLineageDir,
  recordedLineage,
  removeLineageDir,
  type Lineage
} from './lineage';
import { log } from './log';
import type { OutstandingRequest, Relay } from './relay';
import { asRequestError, RequestError } from './request-errors';

export interface RestoreFlowOptions {
  store: ImageStore;
  cwd: string;
  env: NodeJS.ProcessEnv;
}

/** What `stop` leaves: the image's folder being made ready, and the old kernel's requests. */
interface Stopped {
  preparing: Promise<unknown>;
  /** The cell the old process was running, which it will never answer. */
  running: OutstandingRequest | undefined;
  /** Requests the old process had queued but not started. */
  queued: OutstandingRequest[];
}

export class RestoreFlow {
  /** `state.executions` when the running kernel was last checkpointed or restored. */
  private executionsAtCurrent = 0;

  constructor(
    private readonly options: RestoreFlowOptions,
    private readonly host: KernelHost,
    private readonly relay: Relay,
    private readonly agent: AgentChannel,
    private readonly state: KernelState,
    private readonly standIn: KernelStandIn,
    private readonly comms: CommServer
  ) {}

  /**
   * Whether a restore should first keep the running kernel's state: it has run a cell since it
   * was last checkpointed or restored, and the store keeps it (`keepsBeforeRestore`).
   */
  get worthKeeping(): boolean {
    return (
      keepsBeforeRestore(this.options.env) && this.state.executions !== this.executionsAtCurrent
    );
  }

  /** The running kernel is now what its current checkpoint holds. */
  markUnchanged(): void {
    this.executionsAtCurrent = this.state.executions;
  }

  /**
   * Restores checkpoint `id`. `beforeStopping` runs once the image is checked (and rebuilt), just
   * before the running kernel is stopped: a restore that cannot happen keeps nothing.
   */
  async run(
    id: string,
    progress: Progress,
    fromKernel: boolean,
    beforeStopping: (target: Checkpoint) => Promise<void> = async () => undefined
  ): Promise<Checkpoint> {
    const timed = stageTimer(this.options.env);
    const { manifest, record } = await this.verify(id, progress);
    timed('restore: verified');
    // Rebuilt (a chunk image) before the running kernel is touched: a damaged chunk changes nothing.
    const rebuilding = Date.now();
    // A lazy restore may have a chunk image's pages served from its chunks, not rebuilt.
    const serve =
      this.options.env[SERVE_PAGES_SETTING] !== '0' &&
      (await this.host.engine.restoreMode?.().catch(() => null))?.lazy === true;
    const image = await this.options.store.openImage(id, record, { lazyPages: serve });
    timed('restore: image opened');
    if (image.pages) {
      log.info(
        `rebuilt the files of ${id} from chunks in ${Date.now() - rebuilding} ms, all but its ` +
          `pages (${(image.pages.bytes / 2 ** 20).toFixed(0)} MiB), which a page server serves from the chunks`
      );
    } else if (image.rebuilt) {
      log.info(`rebuilt the files of ${id} from chunks in ${Date.now() - rebuilding} ms`);
    }
    try {
      await beforeStopping(manifest);
      // A restored kernel that dies before this restore is answered fails the restore (a fresh
      // kernel, and the error for its requester) rather than ending the supervisor unanswered.
      return await this.host.answeringDeath(() =>
        this.restoreFrom(id, manifest, record, image, progress, fromKernel, timed)
      );
    } finally {
      // The restored kernel runs from its memory: the engine has read its files. Removing a
      // rebuilt folder is not waited for: freeing a GiB of tmpfs took 0.15-0.2 s of the reply
      // (bench/README.md); a supervisor killed meanwhile leaves it to the next one's clean-up.
      const released = image.release();
      if (image.rebuilt && !image.pages) {
        released.catch(() => undefined);
      } else {
        await released;
      }
    }
  }

  private async restoreFrom(
    id: string,
    manifest: Checkpoint,
    record: PrivateRecord,
    image: OpenedImage,
    progress: Progress,
    fromKernel: boolean,
    timed: (stage: string) => void
  ): Promise<Checkpoint> {
    const lineage = recordedLineage(record);
    const reach = this.host.reach(lineage);
    const isolated = reach !== lineage;
    // Where the supervisor reached the kernel being replaced: the folder it owns.
    const oldFolder = this.host.outside ?? this.host.lineage;
    if (!isolated && oldFolder.ipcDir !== lineage.ipcDir && (await lineageIsLive(lineage))) {
      const instead = this.host.engine.forks
        ? 'or let the restore run in namespaces of its own (KERNEL_CHECKPOINT_ISOLATE_RESTORE=0 turns that off).'
        : 'or use the criu engine (it restores in namespaces of its own).';
      throw new RequestError(
        'engine_unavailable',
        `Checkpoint ${id} belongs to a kernel that is still running (its ipc folder ` +
          `${lineage.ipcDir} is in use), and the ${this.host.engine.name} engine restores an image ` +
          `here only at the paths it was taken with; stop that kernel first, ${instead}`
      );
    }
    // Under CRIU the relay and the agent connect while the image is restored (see the engine's
    // acceptsConnectionsWhileRestoring): their connections are up when the kernel runs.
    const connectsEarly = this.host.engine.acceptsConnectionsWhileRestoring === true;
    progress('stopping');
    const stopped = await this.stop(reach);
    timed('restore: running kernel stopped');
    progress('restoring');
    let kernel: KernelProcess;
    try {
      if (isolated && (await makeMountpoint(lineage.ipcDir))) {
        this.host.mountpoints.add(lineage.ipcDir);
      }
      kernel = await this.restore(image, record, lineage, reach, stopped, connectsEarly);
      timed('restore: the restored kernel answers');
    } catch (error) {
      const ownFolder = isolated && reach.ipcDir !== this.host.outside?.ipcDir;
      throw await this.startFreshAfter(error, id, stopped, ownFolder ? reach : null);
    }
    if (oldFolder.ipcDir === lineage.ipcDir && isolated) {
      // The replaced kernel's own folder is now where the restored one's is mounted.
      this.host.mountpoints.add(lineage.ipcDir);
    } else if (oldFolder.ipcDir !== reach.ipcDir && oldFolder.ipcDir !== lineage.ipcDir) {
      await removeLineageDir(oldFolder);
    }
    await this.host.removeMountpoints(lineage.ipcDir);
    progress('reconnecting');
    try {
      await this.whileAlive(kernel, 'the restore was done', () => this.reconnect(id, record));
    } catch (error) {
      // Adopted, and dead (its restorer was killed just after the restore, say): the restore
      // failed all the same, and its requester hears so.
      this.host.release();
      await kernel.terminate();
      throw await this.startFreshAfter(error, id, stopped);
    }
    timed('restore: reconnected');
    this.host.currentId = id;
    this.markUnchanged();
    this.settle(stopped, id, fromKernel);
    log.info(`restored ${id}`);
    this.comms.broadcast({
      type: 'event',
      event: 'restored',
      checkpoint: manifest,
      checkpoint_id: id,
      current_id: id
    });
    return manifest;
  }

  /**
   * After a failed restore: the old kernel is gone, so a fresh one is started (the notebook
   * stays usable), once the failed restore's own folder (`folderToRemove`) is gone; returns the
   * error for the restore's requester, which says so.
   */
  private async startFreshAfter(
    error: unknown,
    id: string,
    stopped: Stopped,
    folderToRemove: Lineage | null = null
  ): Promise<RequestError> {
    const failure = asRequestError(error);
    log.error(`restore of ${id} failed, starting a fresh kernel: ${failure.message}`);
    this.host.disconnect(true);
    if (folderToRemove) {
      await removeLineageDir(folderToRemove);
    }
    await this.host.launchFresh();
    this.settle(stopped, id, false);
    return new RequestError(
      failure.code,
      `${failure.message} A fresh kernel was started instead.`,
      failure.detail
    );
  }

  /**
   * After the kernel process died with its engine, killed mid-snapshot (CRIU's injected code was
   * running in it: docs/engines.md, "A killed dump"): the kernel is restored from the image it
   * came from, so that the notebook goes on from there rather than losing its kernel. Resolves
   * with the error for the checkpoint's requester, which says what happened and what is lost;
   * rejects (the supervisor then ends, as for any dead kernel) when there is no such image.
   */
  async rewind(cause: RequestError, exit: KernelExit, progress: Progress): Promise<RequestError> {
    const id = this.host.currentId;
    const said = `${cause.message} The kernel process died with it (${exitText(exit)})`;
    if (id === null) {
      throw new RequestError(cause.code, `${said}, and it has no checkpoint to go back to.`);
    }
    try {
      await this.run(id, progress, false);
    } catch (error) {
      const failure = asRequestError(error);
      return new RequestError(
        failure.code,
        `${said}; restoring its checkpoint ${id} failed too: ${failure.message}`,
        failure.detail
      );
    }
    log.warn(`the kernel died with its killed dump; restarted from ${id}`);
    return new RequestError(
      cause.code,
      `${said}; it was restarted from its checkpoint ${id}: what it did after that checkpoint is lost.`,
      cause.detail
    );
  }

  /** Checks everything that can fail before the running kernel is touched (and for a fork). */
  async verify(
    id: string,
    progress: Progress
  ): Promise<{ manifest: Checkpoint; record: PrivateRecord }> {
    const store = this.options.store;
    // An image still being sealed (checksummed) is restored on its sizes: it was written
    // moments ago by this supervisor, and waiting would add a full read of it to the restore.
    // Both read at once; a problem with the manifest is reported first, as when read in turn.
    const [manifestRead, recordRead] = await Promise.allSettled([
      store.manifest(id),
      store.privateRecord(id)
    ]);
    if (manifestRead.status === 'rejected') {
      throw manifestRead.reason;
    }
    if (recordRead.status === 'rejected') {
      throw recordRead.reason;
    }
    const record = recordRead.value;
    const engine = this.host.engine.name;
    if (record.engine !== engine) {
      throw new RequestError(
        'foreign_image',
        `Checkpoint ${id} was made by the ${record.engine} engine; this kernel runs under ${engine}.`
      );
    }
    if (record.arch !== process.arch) {
      throw new RequestError(
        'foreign_image',
        `Checkpoint ${id} was made on ${record.arch}; this machine is ${process.arch}.`
      );
    }
    this.host.requireEngine();
    progress('verifying');
    await store.verify(id, record, this.options.env.KERNEL_CHECKPOINT_VERIFY === 'always');
    return { manifest: manifestRead.value, record };
  }

  /**
   * Holds client messages and stops the running kernel, closing its sockets without linger:
   * the restored kernel may listen at the same paths. The image's ipc folder is made ready
   * meanwhile (its socket files are stale anyway).
   */
  private async stop(lineage: Lineage): Promise<Stopped> {
    this.relay.pause();
    this.host.disconnect(true);
    const old = this.host.release();
    const preparing = prepareLineageDir(lineage).then(
      () => null,
      (error: unknown) => error
    );
    await old?.terminate();
    const orphans = this.relay.takeOutstanding();
    const running = orphans.find(request => request.header.msg_id === this.state.executing?.msgId);
    return { preparing, running, queued: orphans.filter(request => request !== running) };
  }

  /** Has the engine start the kernel from the image, and adopts it. */
  private async restore(
    image: OpenedImage,
    record: PrivateRecord,
    lineage: Lineage,
    reach: Lineage,
    stopped: Stopped,
    connectsEarly: boolean
  ): Promise<KernelProcess> {
    const unprepared = await stopped.preparing;
    if (unprepared) {
      throw unprepared;
    }
    let answered: Promise<void> | undefined;
    if (connectsEarly) {
      this.host.useEndpointsOf(reach, record.agentEndpoint && reach.agentEndpoint);
      answered = this.relay
        .connectKernel(120000)
        .then(live => (live ? undefined : new Promise<void>(() => undefined)));
      this.host.connectAgent();
    }
    const kernel = await this.host.engine.restore(image.dir, record.engineData, {
      argv: [],
      env: this.options.env,
      cwd: this.options.cwd,
      workDir: reach.ipcDir,
      answered,
      pages: image.pages,
      ...(reach === lineage
        ? {}
        : { isolate: { imageIpcDir: lineage.ipcDir, ownIpcDir: reach.ipcDir } })
    });
    if (!connectsEarly) {
      this.host.useEndpointsOf(reach, record.agentEndpoint && reach.agentEndpoint);
    }
    await this.untilAnswering(kernel);
    this.host.lineage = lineage;
    this.host.outside = reach === lineage ? null : reach;
    this.host.adopt(kernel);
    return kernel;
  }

  /**
   * Waits for the restored kernel's iopub to be live, and fails at once when the kernel dies
   * first: the relay alone would wait out its timeout (120 s) for a kernel that is gone. Not yet
   * adopted, its death is this restore's failure (a fresh kernel follows), not the supervisor's
   * end.
   */
  private async untilAnswering(kernel: KernelProcess): Promise<void> {
    let answering: boolean;
    try {
      answering = await this.whileAlive(kernel, 'it answered', () =>
        this.relay.connectKernel(30000)
      );
    } catch (error) {
      await kernel.terminate();
      throw error;
    }
    if (!answering) {
      log.warn("the restored kernel's iopub did not answer within 30 s");
    }
  }

  /**
   * Runs `step`, and fails at once, saying the kernel exited before `until`, when the restored
   * kernel dies first: each step's own wait (the relay's, the hooks') would wait out its timeout
   * for a kernel that is gone.
   */
  private async whileAlive<T>(
    kernel: KernelProcess,
    until: string,
    step: () => Promise<T>
  ): Promise<T> {
    let done = false;
    const died = kernel.exited.then(exit => {
      if (done) {
        return new Promise<never>(() => undefined);
      }
      // Stopped for a reason of ours (a damaged chunk its page server would not send): that one.
      const cause = stopCauses.get(kernel);
      if (cause) {
        throw asRequestError(cause);
      }
      throw new RequestError(
        'engine_failed',
        `The restored kernel exited before ${until} (${exitText(exit)}).`
      );
    });
    try {
      return await Promise.race([step(), died]);
    } finally {
      done = true;
    }
  }

  /** Connects to the restored kernel and tells the plugin it was restarted from `id`. */
  private async reconnect(id: string, record: PrivateRecord): Promise<void> {
    await this.host.reconnect();
    if (record.agentEndpoint !== null) {
      await tellAndAwaitHooks(this.agent, { type: 'restarted', checkpoint_id: id });
    }
  }

  /**
   * Answers the cell the old process was running (well when `askedForIt`: it asked for this
   * restore, and the image was restored), sends its queued requests to the new process, and
   * lets messages flow.
   */
  private settle(stopped: Stopped, id: string, askedForIt: boolean): void {
    if (stopped.running) {
      this.standIn.finishReplacedCell(stopped.running, id, askedForIt);
    }
    this.relay.requeue(stopped.queued);
    this.state.replaced();
    this.relay.resume();
  }
}

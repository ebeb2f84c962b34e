/**
 * One notebook's link to its kernel's checkpoints: it follows the notebook's
 * session context (kernel changes, restarts), keeps a CheckpointClient open on
 * the current kernel, and feeds a CheckpointModel. Commands and widgets talk to
 * this object; it has no DOM.
 */
import type { ISessionContext } from '@jupyterlab/apputils';
import type { Kernel, KernelMessage, KernelSpec } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';
import type { IDisposable } from '@lumino/disposable';
import type { Checkpoint, Reply } from '../protocol/checkpoint-protocol';
import { CheckpointClient, CheckpointError, NotCheckpointableError } from './comm';
import type { IKernelLike } from './comm';
import { CheckpointModel } from './model';
import type { ListScope } from './model';
import { visibleFromOrigin } from './new-notebook';
import type { INotebookOrigin } from './new-notebook';

/** The kernelspec metadata key our installer writes. */
export const SPEC_METADATA_KEY = 'kernel_checkpoint';

/** Name of the checkpointable kernelspec wrapping `name`. */
export function checkpointableSpecName(name: string): string {
  return `${name}-checkpoint`;
}

/**
 * Find the installed checkpointable kernelspec that wraps a kernelspec.
 */
export function findCheckpointableSpec(
  specs: KernelSpec.ISpecModels | null | undefined,
  name: string
): KernelSpec.ISpecModel | null {
  const all = specs?.kernelspecs ?? {};
  const direct = all[checkpointableSpecName(name)];
  if (direct) {
    return direct;
  }
  for (const spec of Object.values(all)) {
    const meta = spec?.metadata?.[SPEC_METADATA_KEY] as { wraps?: string } | undefined;
    if (spec && meta && meta.wraps === name) {
      return spec;
    }
  }
  return null;
}

export class KernelCheckpointSession implements IDisposable {
  constructor(options: KernelCheckpointSession.IOptions) {
    this.sessionContext = options.sessionContext;
    this._specsManager = options.specsManager ?? null;
    this._helloTimeout = options.helloTimeout ?? 5000;
    this._identity = options.identity ?? null;
    this._document = options.document ?? null;
    // The path comes from the document when there is one, else from the session.
    if (this._document) {
      this._document.pathChanged.connect(this._onPathChanged, this);
    } else {
      this.sessionContext.propertyChanged.connect(this._onSessionProperty, this);
    }
    this.sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    this.sessionContext.statusChanged.connect(this._onStatusChanged, this);
    this.sessionContext.iopubMessage.connect(this._onIopub, this);
    void this.sessionContext.ready.then(() => this._attach());
  }

  readonly sessionContext: ISessionContext;
  readonly model = new CheckpointModel();

  /**
   * Path of the notebook: its document's, which follows a rename at once (the session's follows
   * only once the server has moved the session, and not at all while there is none).
   */
  get path(): string {
    return this._document?.path ?? this.sessionContext.path;
  }

  /** Emitted when the notebook's path changes (a rename or move). */
  get pathChanged(): ISignal<this, string> {
    return this._pathChanged;
  }

  /** Emitted when a request of this session fails, with the error. */
  get failed(): ISignal<this, CheckpointError> {
    return this._failed;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** The connected client, if the kernel speaks the protocol. */
  get client(): CheckpointClient | null {
    return this._client;
  }

  /**
   * The kernel's execution count: of the last cell it started (from its execute_input
   * messages), or after a restore the count of the restored checkpoint; null before either.
   * The notebook's cells cannot tell: after a restore they still show the old kernel's counts.
   */
  get executionCount(): number | null {
    return this._executionCount;
  }

  /** Re-open the checkpoint channel on the current kernel. */
  reconnect(): Promise<void> {
    return this._attach(true);
  }

  /** Checkpoint the kernel. */
  async checkpoint(label: string | null): Promise<Checkpoint | undefined> {
    const reply = await this._run('checkpoint', () =>
      this._requireClient('checkpoint').request(
        'checkpoint',
        {
          label,
          notebook_path: this.path,
          notebook_saved: this._identity?.saved?.() ?? null,
          notebook_id: this._identity?.ensure() || null
        },
        { onProgress: p => this.model.applyProgress(p, true) }
      )
    );
    return reply.checkpoint;
  }

  /** Restore the kernel from a checkpoint. */
  async restore(id: string): Promise<void> {
    await this._run('restore', () =>
      this._requireClient('restore').request(
        'restore',
        { checkpoint_id: id },
        { onProgress: p => this.model.applyProgress(p, true) }
      )
    );
    this._restoredFrom(id);
    // The kernel process is new: list again (and the comm may have been re-opened).
    void this.refresh().catch(() => undefined);
  }

  /** Delete a checkpoint image. */
  async remove(id: string): Promise<void> {
    await this._run('delete', () =>
      this._requireClient('delete').request('delete', { checkpoint_id: id })
    );
    // The event removes it too; do it now in case events are late.
    if (this.model.get(id)) {
      const rest = this.model.checkpoints.filter(c => c.id !== id);
      this.model.setCheckpoints(rest, this.model.currentId === id ? null : this.model.currentId);
    }
  }

  /** Give a checkpoint a new label. */
  async rename(id: string, label: string | null): Promise<void> {
    await this._run('label', () =>
      this._requireClient('label').request('label', { checkpoint_id: id, label })
    );
  }

  /**
   * Reads the running kernel's state now (the `summary` action: nothing runs in the kernel)
   * into the model, for the diff against the running kernel. One read at a time; asked again
   * meanwhile, it reads once more after.
   */
  async refreshLive(): Promise<void> {
    if (this._liveReading) {
      this._liveAgain = true;
      return this._liveReading;
    }
    const read = async () => {
      do {
        this._liveAgain = false;
        const client = this._client;
        if (!client || client.state !== 'ready') {
          return;
        }
        try {
          const reply = await client.request('summary');
          if (this._client === client) {
            this.model.setLive({ summary: reply.summary ?? null });
          }
        } catch (reason) {
          if (this._client === client) {
            const message = reason instanceof CheckpointError ? reason.message : String(reason);
            this.model.setLive({ summary: null, error: message });
          }
        }
      } while (this._liveAgain && !this._isDisposed);
    };
    this._liveReading = read().finally(() => {
      this._liveReading = null;
    });
    return this._liveReading;
  }

  /** List the checkpoints: this notebook's ('session') or the whole store ('all'). */
  async refresh(scope: ListScope = this.model.scope): Promise<void> {
    const client = this._requireClient('list');
    const reply = await client.request('list', {
      notebook_path: this.path,
      notebook_id: this._identity?.get() ?? null,
      notebook_saved: this._identity?.saved?.() ?? null,
      scope
    });
    if (reply.notebook_id && this._identity && !this._identity.get()) {
      // Closed without saving the id its checkpoints carry: it takes it back (NotebookIdentity).
      this._identity.adopt?.(reply.notebook_id);
    }
    this.model.setScope(scope);
    // A notebook opened from a checkpoint of another shows that checkpoint as its root, not the
    // other notebook's later ones (its kernel descends from them, so the list has them).
    const origin = this._identity?.origin?.() ?? null;
    this.model.setOrigin(origin?.checkpoint_id ?? null);
    this.model.applyReply(
      origin && scope === 'session' && reply.checkpoints
        ? {
            ...reply,
            checkpoints: visibleFromOrigin(reply.checkpoints, this._identity?.get() ?? null, origin)
          }
        : reply
    );
  }

  private _onPathChanged(): void {
    this._pathChanged.emit(this.path);
  }

  private _onSessionProperty(_: unknown, property: string): void {
    if (property === 'path') {
      this._pathChanged.emit(this.path);
    }
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._document?.pathChanged.disconnect(this._onPathChanged, this);
    this._client?.dispose();
    this._client = null;
    Signal.clearData(this);
  }

  private _requireClient(action: string): CheckpointClient {
    const client = this._client;
    const availability = this.model.availability;
    if (!client || client.state !== 'ready') {
      if (availability.state === 'unavailable') {
        throw new CheckpointError('not_checkpointable', availability.message, action);
      }
      if (availability.state === 'no-kernel') {
        throw new CheckpointError('kernel_not_running', 'The notebook has no kernel.', action);
      }
      throw new CheckpointError(
        'closed',
        'The checkpoint channel to the kernel is not open yet; try again in a moment.',
        action
      );
    }
    return client;
  }

  private async _run(
    action: 'checkpoint' | 'restore' | 'delete' | 'label',
    send: () => Promise<Reply>
  ): Promise<Reply> {
    const long = action === 'checkpoint' || action === 'restore';
    if (long) {
      this.model.setBusy({ action, local: true });
    }
    try {
      const reply = await send();
      this.model.applyReply(reply);
      return reply;
    } catch (reason) {
      const error =
        reason instanceof CheckpointError
          ? reason
          : new CheckpointError('engine_failed', String(reason), action);
      this._failed.emit(error);
      throw error;
    } finally {
      if (long) {
        this.model.setBusy(null);
      }
    }
  }

  private _restoredFrom(id: string | null | undefined): void {
    const count = id ? this.model.get(id)?.state?.execution_count : undefined;
    this._executionCount = typeof count === 'number' ? count : null;
  }

  private _onIopub(_: ISessionContext, msg: KernelMessage.IMessage): void {
    if (msg.header.msg_type === 'execute_input') {
      const count = (msg.content as { execution_count?: unknown }).execution_count;
      if (typeof count === 'number') {
        this._executionCount = count;
      }
    }
    // A cell ended: the kernel's variables may have changed. (Only a cell's idle: the
    // supervisor's answers come wrapped in busy/idle too, and must not start another read.)
    const parent = msg.parent_header as { msg_type?: string } | undefined;
    if (
      msg.header.msg_type === 'status' &&
      (msg.content as { execution_state?: string }).execution_state === 'idle' &&
      parent?.msg_type === 'execute_request' &&
      this.model.loaded
    ) {
      void this.refreshLive();
    }
  }

  private _onKernelChanged(): void {
    this._executionCount = null;
    this.model.clear();
    void this._attach();
  }

  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting') {
      // JupyterLab drops its comms on a restart; open a new one once the kernel is back.
      this._reopenWhenIdle = true;
    } else if (status === 'dead') {
      this._client?.dispose();
      this._client = null;
      this.model.setAvailability({ state: 'no-kernel' });
    } else if (this._reopenWhenIdle && (status === 'idle' || status === 'busy')) {
      this._reopenWhenIdle = false;
      void this._attach(true);
    }
  }

  /**
   * Connect to the current kernel (again).
   *
   * @param reuse keep the client (and its pending requests) and re-open its comm.
   */
  private async _attach(reuse = false): Promise<void> {
    if (this._isDisposed) {
      return;
    }
    const kernel = this.sessionContext.session?.kernel ?? null;
    if (!kernel) {
      this._client?.dispose();
      this._client = null;
      this.model.setAvailability({ state: 'no-kernel' });
      return;
    }
    const generation = ++this._generation;
    let client = this._client;
    if (!reuse || !client || client.isDisposed || this._clientKernel !== kernel) {
      client?.dispose();
      const fresh = new CheckpointClient({
        kernel: kernel as unknown as IKernelLike,
        helloTimeout: this._helloTimeout
      });
      client = fresh;
      this._client = fresh;
      this._clientKernel = kernel;
      fresh.event.connect((_, event) => {
        this.model.applyEvent(event);
        if (event.event === 'restored') {
          this._restoredFrom(event.checkpoint?.id ?? event.current_id);
          // A new kernel process: re-open the channel and list again.
          void this._attach(true);
        }
      });
      fresh.progress.connect((_, progress) => {
        this.model.applyProgress(progress, false);
      });
      fresh.stateChanged.connect((_, state) => {
        if (state === 'closed' && this._client === fresh && !this._isDisposed) {
          this.model.setAvailability({ state: 'connecting' });
          // The supervisor closed the channel (e.g. it restarted): try once more.
          setTimeout(() => {
            if (this._client === fresh && fresh.state === 'closed') {
              void this._attach(true);
            }
          }, 1000);
        }
      });
    }

    // A kernel whose spec does not come from our installer cannot answer the comm.
    const specName = kernel.name;
    let spec: KernelSpec.ISpecModel | undefined;
    try {
      spec = await kernel.spec;
    } catch {
      spec = undefined;
    }
    if (generation !== this._generation || this._isDisposed) {
      return;
    }
    if (spec && !spec.metadata?.[SPEC_METADATA_KEY]) {
      this._setUnavailable(
        'not_wrapped',
        `The kernel "${spec.display_name}" is not checkpointable: it was not started by the kernel checkpoint supervisor.`,
        specName
      );
      client.dispose();
      if (this._client === client) {
        this._client = null;
      }
      return;
    }

    this.model.setAvailability({ state: 'connecting' });
    // Open the channel once the kernel has answered kernel_info: until then the server may
    // hold the websocket back (a kernel that is slow to start), and the hello timeout would
    // run out on a channel that is not even open yet.
    await Private.kernelReady(kernel);
    if (generation !== this._generation || this._isDisposed) {
      return;
    }
    try {
      const status = await client.connect();
      if (generation !== this._generation || this._isDisposed) {
        return;
      }
      this.model.setAvailability({ state: 'ready' });
      this.model.setStatus(status);
      await this.refresh();
      void this.refreshLive();
    } catch (reason) {
      if (generation !== this._generation || this._isDisposed) {
        return;
      }
      if (reason instanceof NotCheckpointableError) {
        this._setUnavailable(reason.reason, reason.message, specName);
      } else if (reason instanceof CheckpointError) {
        // The list failed: the channel is fine, show the error.
        this._failed.emit(reason);
      }
    }
  }

  private _setUnavailable(
    reason: NotCheckpointableError['reason'],
    message: string,
    specName: string
  ): void {
    const alt = findCheckpointableSpec(this._specsManager?.specs, specName);
    this.model.setAvailability({
      state: 'unavailable',
      reason,
      message,
      switchTo:
        alt && alt.name !== specName ? { name: alt.name, displayName: alt.display_name } : undefined
    });
  }

  private _specsManager: KernelSpec.IManager | null;
  private _identity: KernelCheckpointSession.IIdentity | null;
  private _helloTimeout: number;
  private _client: CheckpointClient | null = null;
  private _clientKernel: Kernel.IKernelConnection | null = null;
  private _generation = 0;
  private _reopenWhenIdle = false;
  private _executionCount: number | null = null;
  private _liveReading: Promise<void> | null = null;
  private _liveAgain = false;
  private _isDisposed = false;
  private _failed = new Signal<this, CheckpointError>(this);
  private _pathChanged = new Signal<this, string>(this);
  private _document: KernelCheckpointSession.IDocument | null;
}

export namespace KernelCheckpointSession {
  export interface IOptions {
    sessionContext: ISessionContext;
    specsManager?: KernelSpec.IManager;
    helloTimeout?: number;
    /** The notebook's own id, which its checkpoints carry (see notebookIdentity). */
    identity?: IIdentity;
    /** The notebook's document (its panel's context): where its path comes from. */
    document?: IDocument;
  }

  /** What the session reads of the notebook's document (a DocumentRegistry context). */
  export interface IDocument {
    readonly path: string;
    readonly pathChanged: ISignal<unknown, string>;
  }

  /** A notebook's id, kept in its metadata. */
  export interface IIdentity {
    /** The id, or null while the notebook has none. */
    get(): string | null;
    /** The id, written into the notebook first if it has none. */
    ensure(): string;
    /** Where the notebook came from, when "Open in a new notebook" made it. */
    origin?(): INotebookOrigin | null;
    /** When the notebook's file was last saved (its contents model's last_modified), if known. */
    saved?(): string | null;
    /**
     * Takes `id` as the notebook's, when it has none: the id of its checkpoints, which the
     * supervisor found for it (it was closed without saving the id).
     */
    adopt?(id: string): void;
  }
}

namespace Private {
  /** Longest wait for a kernel's first kernel_info reply before trying the channel anyway. */
  export const KERNEL_INFO_WAIT = 120_000;

  /**
   * Resolve when the kernel has answered kernel_info (`IKernelConnection.info`), or after
   * KERNEL_INFO_WAIT; at once for a kernel object without `info` (unit-test fakes).
   */
  export function kernelReady(kernel: unknown): Promise<void> {
    const info = (kernel as { info?: Promise<unknown> } | null)?.info;
    if (!info || typeof (info as Promise<unknown>).then !== 'function') {
      return Promise.resolve();
    }
    return new Promise<void>(resolve => {
      const timer = setTimeout(resolve, KERNEL_INFO_WAIT);
      (info as Promise<unknown>).then(
        () => {
          clearTimeout(timer);
          resolve();
        },
        () => {
          clearTimeout(timer);
          resolve();
        }
      );
    });
  }
}

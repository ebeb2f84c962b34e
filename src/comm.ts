/**
 * The client side of the `kernel_checkpoint` comm.
 *
 * It opens the comm on a kernel connection, waits for the supervisor's `hello`,
 * sends requests and settles each one by its `request_id` (never by the shell
 * future of `comm.send`, which the supervisor does not close with a status
 * message), with a timeout per action. It knows nothing of JupyterLab widgets
 * or of the timeline model.
 */
import { PromiseDelegate, UUID } from '@lumino/coreutils';
import type { JSONObject } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';
import type {
  Action,
  CommOpenData,
  ErrorCode,
  ErrorInfo,
  Event as CheckpointEvent,
  Progress,
  Reply,
  Request,
  SupervisorMessage,
  SupervisorStatus
} from '../protocol/checkpoint-protocol';
import { COMM_TARGET, PROTOCOL_VERSION } from '../protocol/checkpoint-protocol-constants';

/**
 * The part of a JupyterLab comm (`Kernel.IComm`) the client uses.
 */
export interface ICommLike {
  readonly commId: string;
  readonly isDisposed: boolean;
  onMsg: (msg: { content: { data: unknown } }) => void | PromiseLike<void>;
  onClose: (msg: { content: { data: unknown } }) => void | PromiseLike<void>;
  open(data?: JSONObject): unknown;
  send(data: JSONObject): unknown;
  close(data?: JSONObject): unknown;
  dispose(): void;
  commsOverSubshells?: unknown;
}

/**
 * The part of a JupyterLab kernel connection the client uses.
 */
export interface IKernelLike {
  createComm(targetName: string): ICommLike;
}

/**
 * Why a request did not succeed: a code of the protocol, or one of the client's own.
 */
export type ClientErrorCode = ErrorCode | 'timeout' | 'closed' | 'not_checkpointable';

/**
 * A failed request. `message` is the supervisor's sentence for a person.
 */
export class CheckpointError extends Error {
  constructor(
    readonly code: ClientErrorCode,
    message: string,
    readonly action?: string,
    readonly detail?: string
  ) {
    super(message);
    this.name = 'CheckpointError';
  }

  static fromInfo(info: ErrorInfo, action?: string): CheckpointError {
    return new CheckpointError(info.code, info.message, action, info.detail);
  }
}

/**
 * Why a kernel cannot be checkpointed.
 */
export type UnavailableReason = 'no_hello' | 'comm_closed' | 'not_wrapped' | 'protocol';

/**
 * Raised by `connect()` when the kernel does not speak the protocol.
 */
export class NotCheckpointableError extends CheckpointError {
  constructor(
    readonly reason: UnavailableReason,
    message: string
  ) {
    super('not_checkpointable', message);
    this.name = 'NotCheckpointableError';
  }
}

/** Default per-action timeouts, in milliseconds. */
export const DEFAULT_TIMEOUTS: Readonly<Record<Action, number>> = {
  checkpoint: 180_000,
  restore: 180_000,
  list: 30_000,
  delete: 30_000,
  label: 30_000,
  status: 15_000,
  fork: 180_000,
  summary: 15_000,
  // A search forks several checkpoints, one round after another.
  bisect: 3_600_000
};

/** The connection state of a client. */
export type ClientState = 'idle' | 'connecting' | 'ready' | 'unavailable' | 'closed' | 'disposed';

/**
 * Options of a request.
 */
export interface IRequestOptions {
  /** Milliseconds before the request fails with code 'timeout'. */
  timeout?: number;
  /** Called for every `progress` message of this request. */
  onProgress?: (progress: Progress) => void;
}

/** The fields of a request besides request_id and action. */
export type RequestParams = Omit<Request, 'request_id' | 'action'>;

interface IPending {
  action: Action;
  params: RequestParams;
  comm: ICommLike;
  delegate: PromiseDelegate<Reply>;
  timer: ReturnType<typeof setTimeout>;
  onProgress?: (progress: Progress) => void;
}

/**
 * A client of the kernel checkpoint protocol over one kernel connection.
 */
export class CheckpointClient {
  constructor(options: CheckpointClient.IOptions) {
    this._kernel = options.kernel;
    this._helloTimeout = options.helloTimeout ?? 5000;
    this._timeouts = { ...DEFAULT_TIMEOUTS, ...(options.timeouts ?? {}) };
    this._clientName = options.clientName ?? 'jupyterlab';
  }

  /** The connection state. */
  get state(): ClientState {
    return this._state;
  }

  /** The status the supervisor sent in its last hello (or status reply). */
  get status(): SupervisorStatus | null {
    return this._status;
  }

  /** Emitted when the state changes. */
  get stateChanged(): ISignal<this, ClientState> {
    return this._stateChanged;
  }

  /** Emitted for every `event` broadcast of the supervisor. */
  get event(): ISignal<this, CheckpointEvent> {
    return this._event;
  }

  /** Emitted for every `progress` message, whichever request it belongs to. */
  get progress(): ISignal<this, Progress> {
    return this._progress;
  }

  /** Emitted with the status of each hello. */
  get hello(): ISignal<this, SupervisorStatus> {
    return this._hello;
  }

  /** Number of requests awaiting an answer. */
  get pendingCount(): number {
    return this._pending.size;
  }

  get isDisposed(): boolean {
    return this._state === 'disposed';
  }

  /**
   * Open the comm and wait for the supervisor's hello.
   *
   * Rejects with a NotCheckpointableError when no hello comes within the hello
   * timeout, or when the kernel closes the comm first (ipykernel closes comms to
   * targets it does not know).
   */
  connect(): Promise<SupervisorStatus> {
    if (this.isDisposed) {
      return Promise.reject(new CheckpointError('closed', 'The checkpoint client is disposed.'));
    }
    if (this._connecting) {
      return this._connecting.promise;
    }
    const old = this._comm;
    if (old) {
      this._retire(old);
    }
    const delegate = new PromiseDelegate<SupervisorStatus>();
    this._connecting = delegate;
    // Keep callers that do not await this promise from seeing an unhandled rejection.
    delegate.promise.catch(() => undefined);
    this._setState('connecting');

    let comm: ICommLike;
    try {
      comm = this._kernel.createComm(COMM_TARGET);
    } catch (reason) {
      this._connecting = null;
      const error = new NotCheckpointableError(
        'comm_closed',
        `Could not open the checkpoint channel: ${String(reason)}`
      );
      this._setState('unavailable');
      delegate.reject(error);
      return delegate.promise;
    }
    // The comm is answered by the supervisor, never by the kernel: do not ask the
    // kernel for a subshell for it.
    if ('commsOverSubshells' in comm) {
      try {
        comm.commsOverSubshells = 'disabled';
      } catch {
        // Older JupyterLab: nothing to disable.
      }
    }
    this._comm = comm;
    comm.onMsg = msg => this._onMessage(comm, msg.content.data);
    comm.onClose = () => this._onClose(comm);

    const timer = setTimeout(() => {
      if (this._connecting === delegate) {
        this._connecting = null;
        this._setState('unavailable');
        this._dropComm(comm, true);
        delegate.reject(
          new NotCheckpointableError(
            'no_hello',
            `The kernel did not answer on the '${COMM_TARGET}' channel within ${Math.round(
              this._helloTimeout / 1000
            )} s: it is not running under the kernel checkpoint supervisor.`
          )
        );
      }
    }, this._helloTimeout);
    this._helloTimer = timer;

    const data: CommOpenData = { protocol_version: PROTOCOL_VERSION, client: this._clientName };
    try {
      Private.silence(comm.open(data as unknown as JSONObject));
    } catch (reason) {
      clearTimeout(timer);
      this._connecting = null;
      this._setState('unavailable');
      delegate.reject(
        new NotCheckpointableError(
          'comm_closed',
          `Could not open the checkpoint channel: ${String(reason)}`
        )
      );
    }
    return delegate.promise;
  }

  /**
   * Send a request and resolve with its reply.
   *
   * Rejects with a CheckpointError carrying the supervisor's error, or with code
   * 'timeout' / 'closed'.
   */
  request(
    action: Action,
    params: RequestParams = {},
    options: IRequestOptions = {}
  ): Promise<Reply> {
    const comm = this._comm;
    if (this.isDisposed || this._state !== 'ready' || !comm || comm.isDisposed) {
      return Promise.reject(
        new CheckpointError(
          this._state === 'unavailable' ? 'not_checkpointable' : 'closed',
          'The checkpoint channel to the kernel is not open.',
          action
        )
      );
    }
    const requestId = UUID.uuid4();
    const delegate = new PromiseDelegate<Reply>();
    const timeout = options.timeout ?? this._timeouts[action];
    const timer = setTimeout(() => {
      if (this._pending.delete(requestId)) {
        delegate.reject(
          new CheckpointError(
            'timeout',
            `The kernel supervisor did not answer the ${action} request within ${Math.round(
              timeout / 1000
            )} s.`,
            action
          )
        );
        this._maybeCloseRetired();
      }
    }, timeout);
    this._pending.set(requestId, {
      action,
      params,
      comm,
      delegate,
      timer,
      onProgress: options.onProgress
    });
    const message: Request = { ...params, request_id: requestId, action };
    try {
      Private.silence(comm.send(message as unknown as JSONObject));
    } catch (reason) {
      clearTimeout(timer);
      this._pending.delete(requestId);
      delegate.reject(
        new CheckpointError(
          'closed',
          `Could not send the ${action} request: ${String(reason)}`,
          action
        )
      );
    }
    return delegate.promise;
  }

  /**
   * Fail every pending request (for instance when the kernel restarts under them).
   */
  rejectAll(code: ClientErrorCode, message: string): void {
    const pending = Array.from(this._pending.values());
    this._pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.delegate.reject(new CheckpointError(code, message, p.action));
    }
    this._maybeCloseRetired();
  }

  /**
   * Close the comm and fail pending requests.
   */
  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    clearTimeout(this._helloTimer);
    if (this._connecting) {
      this._connecting.reject(new CheckpointError('closed', 'The checkpoint client is disposed.'));
      this._connecting = null;
    }
    this.rejectAll('closed', 'The checkpoint client is disposed.');
    if (this._comm) {
      this._dropComm(this._comm, true);
      this._comm = null;
    }
    for (const comm of this._retired) {
      this._dropComm(comm, true);
    }
    this._retired.clear();
    this._setState('disposed');
    Signal.clearData(this);
  }

  private _onMessage(comm: ICommLike, raw: unknown): void {
    if (!raw || typeof raw !== 'object') {
      return;
    }
    const msg = raw as SupervisorMessage;
    const isCurrent = comm === this._comm;
    switch (msg.type) {
      case 'hello': {
        if (!isCurrent) {
          return;
        }
        clearTimeout(this._helloTimer);
        this._status = msg.status;
        const major = String(msg.status?.protocol_version ?? '').split('.')[0];
        if (major !== PROTOCOL_VERSION.split('.')[0]) {
          const error = new NotCheckpointableError(
            'protocol',
            `The kernel supervisor speaks protocol ${msg.status?.protocol_version}, this extension ${PROTOCOL_VERSION}.`
          );
          this._setState('unavailable');
          const connecting = this._connecting;
          this._connecting = null;
          connecting?.reject(error);
          return;
        }
        this._setState('ready');
        const connecting = this._connecting;
        this._connecting = null;
        connecting?.resolve(msg.status);
        this._hello.emit(msg.status);
        return;
      }
      case 'event': {
        // A retired comm may still be open for a pending reply: take events once.
        if (!isCurrent) {
          return;
        }
        this._event.emit(msg);
        if (msg.event === 'restored') {
          this._settleRestoredFromEvent(msg);
        }
        return;
      }
      case 'progress': {
        const pending = this._pending.get(msg.request_id);
        if (pending?.onProgress) {
          pending.onProgress(msg);
        }
        this._progress.emit(msg);
        return;
      }
      case 'reply': {
        const pending = this._pending.get(msg.request_id);
        if (!pending) {
          return;
        }
        this._pending.delete(msg.request_id);
        clearTimeout(pending.timer);
        if (msg.status) {
          this._status = msg.status;
        }
        pending.delegate.resolve(msg);
        this._maybeCloseRetired();
        return;
      }
      case 'error': {
        const pending = this._pending.get(msg.request_id);
        if (!pending) {
          return;
        }
        this._pending.delete(msg.request_id);
        clearTimeout(pending.timer);
        pending.delegate.reject(
          msg.error
            ? CheckpointError.fromInfo(msg.error, msg.action)
            : new CheckpointError('engine_failed', 'The request failed.', msg.action)
        );
        this._maybeCloseRetired();
        return;
      }
      default:
        return;
    }
  }

  /**
   * A restore whose reply was addressed to a comm the kernel connection dropped
   * (JupyterLab disposes comms when it sees the kernel restart) is settled by
   * the `restored` event that names its checkpoint.
   */
  private _settleRestoredFromEvent(event: CheckpointEvent): void {
    const restoredId = event.checkpoint_id ?? event.checkpoint?.id ?? event.current_id;
    for (const [id, pending] of this._pending) {
      if (
        pending.action === 'restore' &&
        pending.comm !== this._comm &&
        pending.params.checkpoint_id === restoredId
      ) {
        this._pending.delete(id);
        clearTimeout(pending.timer);
        pending.delegate.resolve({
          type: 'reply',
          request_id: id,
          action: 'restore',
          checkpoint: event.checkpoint,
          current_id: event.current_id
        });
      }
    }
    this._maybeCloseRetired();
  }

  private _onClose(comm: ICommLike): void {
    if (this._retired.delete(comm)) {
      this._failPendingOn(comm);
      return;
    }
    if (comm !== this._comm) {
      return;
    }
    this._comm = null;
    if (this._connecting) {
      // Closed before any hello: the kernel does not know the target.
      clearTimeout(this._helloTimer);
      const connecting = this._connecting;
      this._connecting = null;
      this._setState('unavailable');
      connecting.reject(
        new NotCheckpointableError(
          'comm_closed',
          `The kernel closed the '${COMM_TARGET}' channel: it is not running under the kernel checkpoint supervisor.`
        )
      );
      return;
    }
    this._failPendingOn(comm);
    this._setState('closed');
  }

  private _failPendingOn(comm: ICommLike): void {
    for (const [id, pending] of this._pending) {
      if (pending.comm === comm) {
        this._pending.delete(id);
        clearTimeout(pending.timer);
        pending.delegate.reject(
          new CheckpointError(
            'closed',
            `The checkpoint channel closed before the ${pending.action} request was answered.`,
            pending.action
          )
        );
      }
    }
  }

  /** Keep an old comm open while requests sent on it still await an answer. */
  private _retire(comm: ICommLike): void {
    this._comm = null;
    clearTimeout(this._helloTimer);
    const hasPending = Array.from(this._pending.values()).some(p => p.comm === comm);
    if (hasPending && !comm.isDisposed) {
      this._retired.add(comm);
    } else {
      this._dropComm(comm, true);
    }
  }

  private _maybeCloseRetired(): void {
    for (const comm of Array.from(this._retired)) {
      const hasPending = Array.from(this._pending.values()).some(p => p.comm === comm);
      if (!hasPending) {
        this._retired.delete(comm);
        this._dropComm(comm, true);
      }
    }
  }

  private _dropComm(comm: ICommLike, close: boolean): void {
    comm.onMsg = () => undefined;
    comm.onClose = () => undefined;
    if (close && !comm.isDisposed) {
      try {
        Private.silence(comm.close());
      } catch {
        // The kernel connection may already be gone.
      }
    }
    if (!comm.isDisposed) {
      comm.dispose();
    }
    if (comm === this._comm) {
      this._comm = null;
    }
  }

  private _setState(state: ClientState): void {
    if (this._state === state || this._state === 'disposed') {
      return;
    }
    this._state = state;
    this._stateChanged.emit(state);
  }

  private _kernel: IKernelLike;
  private _helloTimeout: number;
  private _timeouts: Record<Action, number>;
  private _clientName: string;
  private _comm: ICommLike | null = null;
  private _retired = new Set<ICommLike>();
  private _connecting: PromiseDelegate<SupervisorStatus> | null = null;
  private _helloTimer: ReturnType<typeof setTimeout> | undefined = undefined;
  private _pending = new Map<string, IPending>();
  private _state: ClientState = 'idle';
  private _status: SupervisorStatus | null = null;
  private _stateChanged = new Signal<this, ClientState>(this);
  private _event = new Signal<this, CheckpointEvent>(this);
  private _progress = new Signal<this, Progress>(this);
  private _hello = new Signal<this, SupervisorStatus>(this);
}

export namespace CheckpointClient {
  export interface IOptions {
    kernel: IKernelLike;
    /** Milliseconds to wait for the supervisor's hello (default 5000). */
    helloTimeout?: number;
    /** Per-action timeouts in milliseconds. */
    timeouts?: Partial<Record<Action, number>>;
    /** Name sent in comm_open (default 'jupyterlab'). */
    clientName?: string;
  }
}

namespace Private {
  /**
   * Swallow the rejection of a shell future's `done` promise: the supervisor answers
   * on iopub and may never close the future, and JupyterLab rejects it on restart.
   */
  export function silence(future: unknown): void {
    const done = (future as { done?: Promise<unknown> } | undefined)?.done;
    if (done && typeof done.catch === 'function') {
      done.catch(() => undefined);
    }
  }
}

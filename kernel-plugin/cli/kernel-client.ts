// A client of one running kernel over ZeroMQ, speaking the kernel_checkpoint comm protocol.
//
// It owns its sockets: a Dealer on shell, a Subscriber on iopub and a Dealer on the heartbeat,
// each with one `for await` reader, and sends on shell through the supervisor's SendQueue
// (zeromq.js v6 allows one pending send per socket).
//
// Nothing it sends reaches the kernel process: the supervisor answers the heartbeat and every
// message of our comm (comm_open, comm_msg, comm_close) itself. So a running cell delays nothing
// (ipykernel would answer a shell request only after the cell), and the kernel runs no code on
// our behalf (a kernel_info_request, for one, makes IPython draw a random "tip" for its banner,
// which moves the kernel's `random` state).
//
// Proof that the key is right and that iopub reaches us comes from the supervisor's
// iopub_welcome (JEP 65), sent, signed, as our subscription arrives: a welcome that verifies
// means both; one that does not means the key is wrong. A kernel that sends no welcome gets its
// comm_open again until something answers, and only when nothing does is it asked, on control,
// for a kernel_info (ipykernel answers control while a cell runs), to tell a wrong key from a
// kernel that is not checkpointable.
//
// While it waits, the heartbeat and the shell connection tell whether the kernel is still
// there: a supervisor that dies (kill -9 included) closes its connections, and one that hangs
// stops echoing; either ends the wait with ConnectError('stopped') instead of a hang.

import { randomUUID } from 'node:crypto';

import * as zmq from 'zeromq';

import type {
  Action,
  ErrorReply,
  Progress,
  Reply,
  Request,
  SupervisorMessage,
  SupervisorStatus
} from '../../protocol/checkpoint-protocol';
import { COMM_TARGET, PROTOCOL_VERSION } from '../../protocol/checkpoint-protocol-constants';
import { SendQueue } from '../supervisor/send-queue';
import {
  decode,
  encode,
  endpoint,
  newMessage,
  Signer,
  type ConnectionInfo,
  type Message
} from '../supervisor/wire';

/** Why talking to the kernel failed before (or instead of) an answer. */
export type ConnectFailure =
  'no_kernel' | 'wrong_key' | 'not_checkpointable' | 'timeout' | 'stopped';

export class ConnectError extends Error {
  constructor(
    readonly kind: ConnectFailure,
    message: string
  ) {
    super(message);
  }
}

/** The supervisor answered a request with an ErrorReply. */
export class RequestFailed extends Error {
  constructor(readonly reply: ErrorReply) {
    super(reply.error.message);
  }
}

type Listener = (message: Message) => void;

/** How long to wait for a welcome before treating the kernel as one that sends none. */
const WELCOME_WAIT_MS = 1000;
/** How often a comm_open is sent again while iopub is not proven live. */
const COMM_OPEN_RESEND_MS = 1000;
const HEARTBEAT_INTERVAL_MS = 500;
/** A heartbeat silent this long, after it had answered, means the kernel is gone. */
export const HEARTBEAT_SILENCE_MS = 3000;
const SILENT_BEATS = HEARTBEAT_SILENCE_MS / HEARTBEAT_INTERVAL_MS;
/** At most this long for a comm_close to be queued on the way out. */
const CLOSE_SEND_MS = 1000;

/** `promise`'s value, or null once `ms` have passed; the timer never outlives the wait. */
export function within<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<null>(resolve => {
    timer = setTimeout(() => resolve(null), Math.max(0, ms));
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A promise with its resolver at hand. */
function signal<T>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>(r => {
    resolve = r;
  });
  return { promise, resolve };
}

export interface KernelClientOptions {
  /** Written into comm_open's data.client. */
  clientName?: string;
  /** Where this connection came from, for messages. */
  connectionFile?: string;
}

export class KernelClient {
  readonly session = randomUUID();
  private readonly signer: Signer;
  private readonly shell: zmq.Dealer;
  private readonly iopub: zmq.Subscriber;
  private readonly hb: zmq.Dealer;
  /** A send that fails is given up: a kernel gone is told by the heartbeat and the shell's
   * disconnect, and every wait ends on those, not on a send. */
  private readonly shellOut: SendQueue;
  private readonly iopubListeners = new Set<Listener>();
  private readers: Promise<void>[] = [];
  private closed = false;
  private commId: string | null = null;
  /** The first iopub message: 'verified' (key right, iopub live) or 'bad' (another key). */
  private readonly firstIopub = signal<'verified' | 'bad'>();
  private readonly firstEcho = signal<true>();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private echoed = false;
  private echoedSinceBeat = false;
  private silentBeats = 0;
  private shellConnected = false;
  /** Why the kernel is known to be gone; every wait ends with it. */
  private stoppedBecause: string | null = null;
  private readonly stopWaiters = new Set<(error: ConnectError) => void>();
  /** Messages we could not verify: with the right key there are none. */
  badSignatures = 0;
  /** Messages on iopub that verified. */
  iopubMessages = 0;

  constructor(
    private readonly info: ConnectionInfo,
    private readonly options: KernelClientOptions = {}
  ) {
    this.signer = new Signer(info.key, info.signature_scheme ?? 'hmac-sha256');
    // linger: let a final comm_close leave after the socket is closed (set to 0 in `close`
    // when the kernel is gone and nothing could be delivered).
    this.shell = new zmq.Dealer({ linger: 1000, routingId: this.session });
    this.shellOut = new SendQueue(this.shell, () => undefined);
    this.iopub = new zmq.Subscriber({ linger: 0 });
    // sendTimeout 0: a ping that cannot be queued is dropped, never waited for.
    this.hb = new zmq.Dealer({ linger: 0, sendTimeout: 0 });
  }

  private get where(): string {
    return this.options.connectionFile ?? endpoint(this.info, 'shell');
  }

  /**
   * Connects the sockets (iopub subscribed first: no slow-joiner loss), starts the readers and
   * the heartbeat.
   */
  connect(): void {
    this.shell.events.on('connect', () => {
      this.shellConnected = true;
    });
    this.shell.events.on('disconnect', () => {
      if (this.shellConnected) {
        this.stop('its connection closed (the kernel-checkpoint supervisor exited or was killed)');
      }
    });
    this.iopub.subscribe();
    this.iopub.connect(endpoint(this.info, 'iopub'));
    this.shell.connect(endpoint(this.info, 'shell'));
    this.hb.connect(endpoint(this.info, 'hb'));
    this.readers = [this.readShell(), this.readIopub(), this.readHeartbeat()];
    this.ping();
    this.heartbeatTimer = setInterval(() => this.beat(), HEARTBEAT_INTERVAL_MS);
    this.heartbeatTimer.unref();
  }

  private ping(): void {
    this.hb.send(['', `kernel-checkpoint-${Date.now()}`]).catch(() => undefined);
  }

  /**
   * Counts beats without an echo rather than time since the last one: when this process itself
   * is held up (a loaded machine), its first timer after the pause runs before the echoes that
   * came meanwhile are read, and must not take that for a silent kernel.
   */
  private beat(): void {
    this.silentBeats = this.echoedSinceBeat || !this.echoed ? 0 : this.silentBeats + 1;
    this.echoedSinceBeat = false;
    if (this.silentBeats >= SILENT_BEATS) {
      this.stop(
        `its heartbeat has been silent for ${HEARTBEAT_SILENCE_MS / 1000} s (the kernel-checkpoint ` +
          'supervisor hangs or is gone)'
      );
      return;
    }
    this.ping();
  }

  /** The kernel is gone: every pending wait fails with a sentence saying so. */
  private stop(reason: string): void {
    if (this.stoppedBecause || this.closed) {
      return;
    }
    this.stoppedBecause = reason;
    clearInterval(this.heartbeatTimer);
    const error = this.stoppedError();
    for (const waiter of [...this.stopWaiters]) {
      waiter(error);
    }
  }

  private stoppedError(): ConnectError {
    return new ConnectError(
      'stopped',
      `The kernel of ${this.where} stopped while this command waited for it: ${this.stoppedBecause}.`
    );
  }

  private decodeOrCount(frames: Buffer[]): Message | null {
    try {
      return decode(frames, this.signer).message;
    } catch {
      this.badSignatures += 1;
      return null;
    }
  }

  private async readShell(): Promise<void> {
    try {
      // Nothing we send on shell is answered on shell (the comm answers on iopub); a reader
      // keeps the socket's queue from filling with anything that comes all the same.
      for await (const frames of this.shell) {
        this.decodeOrCount(frames);
      }
    } catch (error) {
      if (!this.closed) {
        throw error;
      }
    }
  }

  private async readIopub(): Promise<void> {
    try {
      for await (const frames of this.iopub) {
        // iopub frames start with a topic; decode finds the delimiter after it.
        const message = this.decodeOrCount(frames);
        if (!message) {
          this.firstIopub.resolve('bad');
          continue;
        }
        this.iopubMessages += 1;
        this.firstIopub.resolve('verified');
        for (const listener of [...this.iopubListeners]) {
          listener(message);
        }
      }
    } catch (error) {
      if (!this.closed) {
        throw error;
      }
    }
  }

  private async readHeartbeat(): Promise<void> {
    try {
      for await (const _echo of this.hb) {
        this.echoed = true;
        this.echoedSinceBeat = true;
        this.firstEcho.resolve(true);
      }
    } catch (error) {
      if (!this.closed) {
        throw error;
      }
    }
  }

  /** Sends on shell after every earlier send has gone; never rejects. */
  private sendShell(message: Message): Promise<void> {
    return this.shellOut.send(encode(message, this.signer));
  }

  /**
   * Waits for the first iopub message `match` accepts, or null after `timeoutMs`; rejects with
   * ConnectError('stopped') as soon as the kernel is known to be gone.
   */
  waitIopub<T>(match: (message: Message) => T | undefined, timeoutMs: number): Promise<T | null> {
    return new Promise((resolve, reject) => {
      if (this.stoppedBecause) {
        reject(this.stoppedError());
        return;
      }
      const listener: Listener = message => {
        const found = match(message);
        if (found !== undefined) {
          finish();
          resolve(found);
        }
      };
      const stopped = (error: ConnectError) => {
        finish();
        reject(error);
      };
      const timer = setTimeout(() => {
        finish();
        resolve(null);
      }, timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        this.iopubListeners.delete(listener);
        this.stopWaiters.delete(stopped);
      };
      this.iopubListeners.add(listener);
      this.stopWaiters.add(stopped);
    });
  }

  /**
   * Waits for proof that the key is right and iopub reaches us: the first verified iopub
   * message, normally the supervisor's welcome. Throws ConnectError: wrong_key when iopub
   * carries messages signed with another key, no_kernel when neither iopub nor the heartbeat
   * answers within `timeoutMs`. A kernel that sends no welcome but answers its heartbeat passes
   * unproven (`openComm` then asks until it is answered).
   */
  async handshake(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const first = await within(this.firstIopub.promise, Math.min(timeoutMs, WELCOME_WAIT_MS));
    if (first === 'verified') {
      return;
    }
    if (first === 'bad') {
      throw this.wrongKey('its messages on iopub do not verify with that key');
    }
    const alive = await within(
      Promise.race([this.firstEcho.promise, this.firstIopub.promise]),
      deadline - Date.now()
    );
    if (alive === 'bad') {
      throw this.wrongKey('its messages on iopub do not verify with that key');
    }
    if (alive === null) {
      const seconds = Math.round(timeoutMs / 100) / 10;
      throw new ConnectError(
        'no_kernel',
        `No kernel answers at ${this.where} (no message and no heartbeat within ${seconds} s): ` +
          'the kernel has probably exited and left its connection file behind.'
      );
    }
  }

  private wrongKey(evidence: string): ConnectError {
    return new ConnectError(
      'wrong_key',
      `The kernel of ${this.where} answers, but ${evidence}: the key in the connection file is ` +
        'probably wrong (a kernel ignores messages signed with another key). Use the connection ' +
        'file the kernel was started with.'
    );
  }

  /** Opens the kernel_checkpoint comm; the supervisor's status from its hello. */
  async openComm(timeoutMs: number): Promise<SupervisorStatus> {
    const commId = randomUUID().replace(/-/g, '');
    const answer = this.waitIopub<SupervisorMessage | 'closed'>(message => {
      if (message.content?.comm_id !== commId) {
        return undefined;
      }
      if (message.header.msg_type === 'comm_close') {
        return 'closed';
      }
      const data = message.content.data as SupervisorMessage | undefined;
      if (
        message.header.msg_type === 'comm_msg' &&
        (data?.type === 'hello' || data?.type === 'error')
      ) {
        return data;
      }
      return undefined;
    }, timeoutMs);
    const open = () =>
      this.sendShell(
        newMessage(
          'comm_open',
          {
            comm_id: commId,
            target_name: COMM_TARGET,
            data: {
              protocol_version: PROTOCOL_VERSION,
              client: this.options.clientName ?? 'cli'
            }
          },
          { session: this.session }
        )
      );
    // Sent again (same comm id: the supervisor just says hello again) until one is sent while
    // iopub is proven live, whose answer cannot be lost to a subscription not yet in place.
    let sentWhileLive = this.iopubMessages > 0;
    void open();
    const resend = setInterval(() => {
      if (!sentWhileLive) {
        sentWhileLive = this.iopubMessages > 0;
        void open();
      }
    }, COMM_OPEN_RESEND_MS);
    let data: SupervisorMessage | 'closed' | null;
    try {
      data = await answer;
    } finally {
      clearInterval(resend);
    }
    if (data === 'closed') {
      throw new ConnectError(
        'not_checkpointable',
        `The kernel of ${this.where} is not checkpointable: it closed the kernel_checkpoint comm ` +
          '(it was not started under kernel-checkpoint; choose a "(checkpointable)" kernel, see ' +
          '`kernel-checkpoint install`).'
      );
    }
    if (data === null) {
      throw await this.noHello(timeoutMs);
    }
    if (data.type === 'error') {
      throw new RequestFailed(data);
    }
    if (data.type !== 'hello') {
      throw new ConnectError('not_checkpointable', 'Unexpected answer to comm_open.');
    }
    this.commId = commId;
    return data.status;
  }

  /** Why nothing said hello: the key is wrong, or the kernel is not one of ours. */
  private async noHello(timeoutMs: number): Promise<ConnectError> {
    const seconds = Math.round(timeoutMs / 1000);
    const notCheckpointable = new ConnectError(
      'not_checkpointable',
      `The kernel of ${this.where} is not checkpointable: it answers, but nothing answered the ` +
        `kernel_checkpoint comm within ${seconds} s.`
    );
    if (this.iopubMessages > 0) {
      return notCheckpointable; // its messages verify: the key is right
    }
    if (this.badSignatures > 0) {
      return this.wrongKey('its messages do not verify with that key');
    }
    // Not our supervisor (it would have answered), or the key is wrong: a kernel answers
    // control even while a cell runs, and only to a request signed with its key.
    return (await this.controlAnswers(Math.min(3000, timeoutMs)))
      ? notCheckpointable
      : this.wrongKey(`nothing answered our signed messages within ${seconds} s`);
  }

  /** Does the kernel answer a kernel_info_request on control within `timeoutMs`? */
  private async controlAnswers(timeoutMs: number): Promise<boolean> {
    if (this.info.control_port === undefined) {
      return false;
    }
    const control = new zmq.Dealer({ linger: 0, sendTimeout: 0, receiveTimeout: timeoutMs });
    try {
      control.connect(endpoint(this.info, 'control'));
      const request = newMessage('kernel_info_request', {}, { session: this.session });
      await control.send(encode(request, this.signer));
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const reply = this.decodeOrCount(await control.receive());
        if (reply?.parent_header?.msg_id === request.header.msg_id) {
          return true;
        }
      }
      return false;
    } catch {
      return false;
    } finally {
      control.close();
    }
  }

  /**
   * Sends one request over the comm and waits for its Reply; progress messages go to
   * `onProgress`. Throws RequestFailed for an ErrorReply, ConnectError('timeout') after
   * `timeoutMs`, ConnectError('stopped') as soon as the kernel is gone.
   */
  async request(
    action: Action,
    fields: Omit<Request, 'request_id' | 'action'>,
    onProgress: (progress: Progress) => void,
    timeoutMs: number
  ): Promise<Reply> {
    if (!this.commId) {
      throw new Error('open the comm first');
    }
    const commId = this.commId;
    const requestId = randomUUID();
    const answer = this.waitIopub<Reply | ErrorReply>(message => {
      if (message.header.msg_type !== 'comm_msg' || message.content?.comm_id !== commId) {
        return undefined;
      }
      const data = message.content.data as SupervisorMessage | undefined;
      if (!data || !('request_id' in data) || data.request_id !== requestId) {
        return undefined;
      }
      if (data.type === 'progress') {
        onProgress(data);
        return undefined;
      }
      return data.type === 'reply' || data.type === 'error' ? data : undefined;
    }, timeoutMs);
    const request: Request = { request_id: requestId, action, ...fields };
    void this.sendShell(
      newMessage('comm_msg', { comm_id: commId, data: request }, { session: this.session })
    );
    const data = await answer;
    if (data === null) {
      throw new ConnectError(
        'timeout',
        `The kernel did not finish ${action} within ${Math.round(timeoutMs / 1000)} s.`
      );
    }
    if (data.type === 'error') {
      throw new RequestFailed(data);
    }
    return data;
  }

  /**
   * Closes the comm (if open) and every socket. Nothing is left to keep the process alive: no
   * timer, no socket, and a comm_close that cannot be delivered is not waited for.
   */
  async close(): Promise<void> {
    if (this.closed) {
      return;
    }
    const commId = this.commId;
    this.commId = null;
    if (commId && !this.stoppedBecause) {
      // Queued at once on a connected socket; the shell's linger delivers it after close.
      await within(
        this.sendShell(
          newMessage('comm_close', { comm_id: commId, data: {} }, { session: this.session })
        ),
        CLOSE_SEND_MS
      );
    }
    this.closed = true;
    clearInterval(this.heartbeatTimer);
    // A wait still pending (its caller gave up on it) ends now, and its timer with it.
    const closed = new ConnectError('stopped', 'The connection to the kernel was closed.');
    for (const waiter of [...this.stopWaiters]) {
      waiter(closed);
    }
    if (this.stoppedBecause || !this.shellConnected) {
      this.shell.linger = 0;
    }
    this.shell.close();
    this.iopub.close();
    this.hb.close();
    await within(Promise.allSettled(this.readers), 1000);
  }
}

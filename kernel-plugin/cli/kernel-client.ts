// A client of one running kernel over ZeroMQ, speaking the kernel_checkpoint comm protocol.
//
// It owns its sockets: a Dealer on shell and a Subscriber on iopub, each with one `for await`
// reader, and sends on shell one at a time (zeromq.js v6 allows one pending send per socket).
// The heartbeat gets a short-lived Request socket of its own, only to tell "wrong key" (the
// kernel silently drops badly signed messages, but its heartbeat still echoes) from "nobody
// there".

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
import {
  decode,
  encode,
  endpoint,
  newMessage,
  Signer,
  type ConnectionInfo,
  type Message
} from '../supervisor/wire';

/** Why talking to the kernel failed before any request could be made. */
export type ConnectFailure = 'no_kernel' | 'wrong_key' | 'not_checkpointable' | 'timeout';

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

function sleep(ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms));
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
  private shellTail: Promise<unknown> = Promise.resolve();
  private readonly shellWaiters = new Map<string, (message: Message) => void>();
  private readonly iopubListeners = new Set<Listener>();
  private readers: Promise<void>[] = [];
  private closed = false;
  private commId: string | null = null;
  /** Messages we could not verify: with the right key there are none. */
  badSignatures = 0;
  iopubMessages = 0;

  constructor(
    private readonly info: ConnectionInfo,
    private readonly options: KernelClientOptions = {}
  ) {
    this.signer = new Signer(info.key, info.signature_scheme ?? 'hmac-sha256');
    // linger: let a final comm_close leave before the socket goes.
    this.shell = new zmq.Dealer({ linger: 1000, routingId: this.session });
    this.iopub = new zmq.Subscriber({ linger: 0 });
  }

  private get where(): string {
    return this.options.connectionFile ?? endpoint(this.info, 'shell');
  }

  /** Connects both sockets (iopub subscribed first: no slow-joiner loss) and starts the readers. */
  connect(): void {
    this.iopub.subscribe();
    this.iopub.connect(endpoint(this.info, 'iopub'));
    this.shell.connect(endpoint(this.info, 'shell'));
    this.readers = [this.readShell(), this.readIopub()];
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
      for await (const frames of this.shell) {
        const message = this.decodeOrCount(frames);
        const parent = message?.parent_header?.msg_id;
        if (message && typeof parent === 'string') {
          this.shellWaiters.get(parent)?.(message);
        }
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
        if (message) {
          this.iopubMessages += 1;
          for (const listener of [...this.iopubListeners]) {
            listener(message);
          }
        }
      }
    } catch (error) {
      if (!this.closed) {
        throw error;
      }
    }
  }

  /** Sends on shell after every earlier send has gone. */
  private sendShell(message: Message): Promise<void> {
    const frames = encode(message, this.signer);
    const sent = this.shellTail.then(() => this.shell.send(frames));
    this.shellTail = sent.catch(() => undefined);
    return sent;
  }

  /** Sends a shell request and waits for its reply, or null after `timeoutMs`. */
  async shellRequest(message: Message, timeoutMs: number): Promise<Message | null> {
    const id = message.header.msg_id;
    const reply = new Promise<Message | null>(resolve => {
      const timer = setTimeout(() => {
        this.shellWaiters.delete(id);
        resolve(null);
      }, timeoutMs);
      this.shellWaiters.set(id, answer => {
        clearTimeout(timer);
        this.shellWaiters.delete(id);
        resolve(answer);
      });
    });
    // (A send can wait for a peer that never comes: the reply's timer bounds it.)
    this.sendShell(message).catch(() => undefined);
    return reply;
  }

  /** Waits for the first iopub message `match` accepts, or null after `timeoutMs`. */
  waitIopub<T>(match: (message: Message) => T | undefined, timeoutMs: number): Promise<T | null> {
    return new Promise(resolve => {
      const listener: Listener = message => {
        const found = match(message);
        if (found !== undefined) {
          finish(found);
        }
      };
      const timer = setTimeout(() => finish(null), timeoutMs);
      const finish = (value: T | null) => {
        clearTimeout(timer);
        this.iopubListeners.delete(listener);
        resolve(value);
      };
      this.iopubListeners.add(listener);
    });
  }

  /** Does anything answer the heartbeat within `timeoutMs`? */
  async heartbeat(timeoutMs: number): Promise<boolean> {
    const hb = new zmq.Request({ linger: 0, receiveTimeout: timeoutMs, sendTimeout: timeoutMs });
    try {
      hb.connect(endpoint(this.info, 'hb'));
      await hb.send('ping');
      const [echo] = await hb.receive();
      return echo?.toString() === 'ping';
    } catch {
      return false;
    } finally {
      hb.close();
    }
  }

  /**
   * A kernel_info round trip, repeated until iopub has carried a message too (so that the comm's
   * answers, which come on iopub, will reach us). Throws ConnectError when the kernel does not
   * answer: wrong_key when its heartbeat echoes (it drops what it cannot verify), no_kernel when
   * nothing answers at all.
   */
  async handshake(timeoutMs: number): Promise<Message> {
    const deadline = Date.now() + timeoutMs;
    let info: Message | null = null;
    let seenIopub = false;
    const iopubSeen = this.waitIopub(() => true, timeoutMs).then(found => {
      seenIopub = found === true;
    });
    while (Date.now() < deadline) {
      const request = newMessage('kernel_info_request', {}, { session: this.session });
      const reply = await this.shellRequest(
        request,
        Math.max(100, Math.min(deadline - Date.now(), info ? 1000 : timeoutMs))
      );
      info ??= reply;
      if (!info) {
        break;
      }
      if (seenIopub || this.iopubMessages > 0) {
        return info;
      }
      await Promise.race([iopubSeen, sleep(Math.min(1000, Math.max(0, deadline - Date.now())))]);
      if (seenIopub || this.iopubMessages > 0) {
        return info;
      }
    }
    if (info) {
      // The shell answers but iopub stays silent: carry on; the comm will say what is wrong.
      return info;
    }
    const seconds = Math.round(timeoutMs / 100) / 10;
    const beating = await this.heartbeat(Math.min(3000, Math.max(1000, timeoutMs / 2)));
    if (beating || this.badSignatures > 0) {
      throw new ConnectError(
        'wrong_key',
        `The kernel of ${this.where} did not answer kernel_info within ${seconds} s, but its heartbeat ` +
          'answers: the key in the connection file is probably wrong (a kernel ignores messages ' +
          'signed with another key). Use the connection file the kernel was started with.'
      );
    }
    throw new ConnectError(
      'no_kernel',
      `No kernel answers at ${this.where} (no kernel_info reply within ${seconds} s and no ` +
        'heartbeat): the kernel has probably exited and left its connection file behind.'
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
    await this.sendShell(
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
    const data = await answer;
    if (data === 'closed') {
      throw new ConnectError(
        'not_checkpointable',
        `The kernel of ${this.where} is not checkpointable: it closed the kernel_checkpoint comm ` +
          '(it was not started under kernel-checkpoint; choose a "(checkpointable)" kernel, see ' +
          '`kernel-checkpoint install`).'
      );
    }
    if (data === null) {
      throw new ConnectError(
        'not_checkpointable',
        `The kernel of ${this.where} is not checkpointable: it answers, but nothing answered the ` +
          `kernel_checkpoint comm within ${Math.round(timeoutMs / 1000)} s.`
      );
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

  /**
   * Sends one request over the comm and waits for its Reply; progress messages go to
   * `onProgress`. Throws RequestFailed for an ErrorReply, ConnectError('timeout') after
   * `timeoutMs`.
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
    await this.sendShell(
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

  /** Closes the comm (if open) and both sockets. */
  async close(): Promise<void> {
    if (this.closed) {
      return;
    }
    if (this.commId) {
      const commId = this.commId;
      this.commId = null;
      await Promise.race([
        this.sendShell(
          newMessage('comm_close', { comm_id: commId, data: {} }, { session: this.session })
        ).catch(() => undefined),
        sleep(1000)
      ]);
    }
    this.closed = true;
    this.shell.close();
    this.iopub.close();
    await Promise.race([Promise.allSettled(this.readers), sleep(1000)]);
  }
}

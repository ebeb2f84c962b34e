// The relay: to Jupyter it is the kernel; to the kernel process it is the only client.
//
// Front (server-facing) sockets are bound once, on the ports of the connection file Jupyter
// gave, with Jupyter's key; they never change, so a restore is invisible to the server. Back
// (kernel-facing) sockets connect to the kernel's private ipc endpoints with the kernel's own key
// and are torn down around every snapshot, so the kernel holds no connection to a process
// outside its image.
//
// Routing: shell, control and stdin each have ONE dealer towards the kernel, all with the same
// routing id, and the client's identity frames travel in front of <IDS|MSG>. ipykernel sends an
// input_request on stdin to the identity list of the shell request, so this is what makes
// input() reach the right client, with any number of clients.

import * as zmq from 'zeromq';

import { JUPYTER_PROTOCOL_VERSION } from '../../protocol/checkpoint-protocol-constants';

import { log } from './log';
import { SendQueue } from './send-queue';
import {
  encode,
  endpoint,
  joinFrames,
  passFrames,
  peekContent,
  peekHeader,
  Signer,
  stringField,
  splitFrames,
  type Channel,
  type ConnectionInfo,
  type Frames,
  type Header,
  type Message
} from './wire';

const BACK_ROUTING_ID = 'kernel-checkpoint-relay';
type RequestChannel = 'shell' | 'control' | 'stdin';
const REQUEST_CHANNELS: RequestChannel[] = ['shell', 'control', 'stdin'];
/** Found in a header's bytes before it is parsed: most replies are not this one. */
const KERNEL_INFO_REPLY = Buffer.from('"kernel_info_reply"');

/** A shell request sent to the kernel process and not answered yet. */
export interface OutstandingRequest {
  frames: Frames;
  header: Header;
}

/** What the supervisor does with messages; the relay only moves frames. */
export interface RelayHandlers {
  /** A verified client request; return true when the supervisor answered it itself. */
  onClientRequest(channel: RequestChannel, frames: Frames, header: Header): boolean;
  /** A message the kernel published ('' as its type when unreadable); false swallows it. */
  onKernelIopub(frames: Frames, msgType: string): boolean;
}

interface BackSockets {
  shell: zmq.Dealer;
  control: zmq.Dealer;
  stdin: zmq.Dealer;
  iopub: zmq.Subscriber;
  outboxes: Record<RequestChannel, SendQueue>;
}

export class Relay {
  private readonly frontSigner: Signer;
  private backSigner: Signer;
  /**
   * The kernel signs with Jupyter's key (every kernel this supervisor started does): a message
   * checked once passes both ways as it is. A kernel restored from another session's image has
   * its own key, and every message is re-signed between the two.
   */
  private sameKey: boolean;
  private readonly front: {
    shell: zmq.Router;
    control: zmq.Router;
    stdin: zmq.Router;
    iopub: zmq.XPublisher;
    hb: zmq.Router;
  };
  private readonly frontOut: Record<RequestChannel | 'iopub' | 'hb', SendQueue>;
  private back: BackSockets | null = null;
  /** Resolves true once the kernel's iopub has answered since `back` was connected. */
  private live: Promise<boolean> = Promise.resolve(false);
  private paused = false;
  /** Shell requests only are held (control and stdin flow): see `holdShell`. */
  private shellHeld = false;
  private readonly held: Array<{ channel: RequestChannel; frames: Frames; header: Header }> = [];
  /** The kernel's last kernel_info_reply content: the supervisor answers with it (KernelStandIn). */
  kernelInfo: Record<string, unknown> | null = null;
  /** Shell requests the kernel process has been sent and not yet answered, by msg_id. */
  private readonly outstanding = new Map<string, OutstandingRequest>();
  private closed = false;
  /** Resolvers waiting for proof that the kernel's iopub reaches us. */
  private iopubWaiters: Array<() => void> = [];
  readonly session = `kernel-checkpoint-${process.pid}`;

  constructor(
    private readonly frontInfo: ConnectionInfo,
    private backInfo: ConnectionInfo,
    private readonly handlers: RelayHandlers
  ) {
    this.frontSigner = new Signer(frontInfo.key, frontInfo.signature_scheme);
    this.backSigner = new Signer(backInfo.key, backInfo.signature_scheme);
    this.sameKey = this.backSigner.signsLike(this.frontSigner);
    // Handover, as ipykernel does: a client reconnecting with the same identity takes its route.
    this.front = {
      shell: new zmq.Router({ linger: 0, handover: true }),
      control: new zmq.Router({ linger: 0, handover: true }),
      stdin: new zmq.Router({ linger: 0, handover: true }),
      // Report every subscription, so each gets a welcome; never drop output.
      iopub: new zmq.XPublisher({
        linger: 0,
        verbosity: 'allSubs',
        noDrop: true,
        sendHighWaterMark: 0
      }),
      hb: new zmq.Router({ linger: 0 })
    };
    this.frontOut = {
      shell: outboxOf(this.front.shell, 'shell'),
      control: outboxOf(this.front.control, 'control'),
      stdin: outboxOf(this.front.stdin, 'stdin'),
      iopub: outboxOf(this.front.iopub, 'iopub'),
      hb: outboxOf(this.front.hb, 'hb')
    };
  }

  /** Binds the server-facing ports and starts relaying from them. */
  async bindFront(): Promise<void> {
    const channels: Channel[] = ['shell', 'control', 'stdin', 'iopub', 'hb'];
    await Promise.all(
      channels.map(channel => this.front[channel].bind(endpoint(this.frontInfo, channel)))
    );
    for (const channel of REQUEST_CHANNELS) {
      void this.readFront(channel);
    }
    void this.readSubscriptions();
    void this.readHeartbeat();
  }

  /** Points the relay at another kernel process (after a restore of another lineage's image). */
  setKernelConnection(info: ConnectionInfo): void {
    this.backInfo = info;
    this.backSigner = new Signer(info.key, info.signature_scheme);
    this.sameKey = this.backSigner.signsLike(this.frontSigner);
  }

  get kernelConnected(): boolean {
    return this.back !== null;
  }

  /**
   * Connects to the kernel and resolves once its iopub is live (or false after `timeoutMs`).
   * Called while connected, it resolves with the first call's answer.
   */
  connectKernel(timeoutMs = 30000): Promise<boolean> {
    if (this.back) {
      return this.live;
    }
    // Connected while the engine restores the kernel, a socket is retried every 2 ms (not
    // ZeroMQ's 100) until the kernel's one listens.
    const options = {
      routingId: BACK_ROUTING_ID,
      linger: 2000,
      sendHighWaterMark: 0,
      receiveHighWaterMark: 0,
      reconnectInterval: 2
    };
    const iopub = new zmq.Subscriber({
      linger: 0,
      receiveHighWaterMark: 0,
      reconnectInterval: 2
    });
    iopub.subscribe();
    const back: BackSockets = {
      shell: new zmq.Dealer(options),
      control: new zmq.Dealer(options),
      stdin: new zmq.Dealer(options),
      iopub,
      outboxes: {} as Record<RequestChannel, SendQueue>
    };
    const live = this.waitForIopub(timeoutMs);
    this.live = live;
    // Subscribe before connecting (slow joiner); iopub first, so its welcome comes early.
    back.iopub.connect(endpoint(this.backInfo, 'iopub'));
    for (const channel of REQUEST_CHANNELS) {
      back[channel].connect(endpoint(this.backInfo, channel));
      back.outboxes[channel] = outboxOf(back[channel], `kernel ${channel}`);
    }
    this.back = back;
    for (const channel of REQUEST_CHANNELS) {
      void this.readBack(back, channel);
    }
    void this.readBackIopub(back);
    if (!this.paused) {
      // Requests that came while there was no kernel to send them to (at start-up, Jupyter's
      // first kernel_info_request): ZeroMQ queues them until the kernel has bound its sockets.
      this.resume();
    }
    return live;
  }

  /** How many connections the relay holds to the kernel: shell, control, stdin and iopub. */
  get kernelConnections(): number {
    return this.back ? REQUEST_CHANNELS.length + 1 : 0;
  }

  /**
   * Closes every socket towards the kernel. What was sent goes on to it first (linger), unless
   * `discard`: for a kernel being replaced, whose successor may listen at the same paths and
   * must not get what was meant for it (the supervisor sends that again itself).
   */
  disconnectKernel(discard = false): void {
    const back = this.back;
    this.back = null;
    if (back) {
      for (const socket of [back.shell, back.control, back.stdin, back.iopub]) {
        if (discard) {
          socket.linger = 0;
        }
        socket.close();
      }
    }
  }

  /** Holds client requests instead of relaying them, until `resume`. */
  pause(): void {
    this.paused = true;
  }

  /**
   * Holds shell requests, until `resume`, from the moment a checkpoint or restore is asked
   * for: a kernel runs shell requests one after another, so a cell sent after the request must
   * run after it (not into the image, not in the kernel being replaced). Control (interrupts,
   * shutdown) and stdin (a running cell's input()) still flow.
   */
  holdShell(): void {
    this.shellHeld = true;
  }

  /** Relays what was held, in order, then everything as it comes. */
  resume(): void {
    this.paused = false;
    this.shellHeld = false;
    const held = this.held.splice(0);
    for (const { channel, frames, header } of held) {
      this.toKernel(channel, frames, header);
    }
  }

  /** Ends a `holdShell` whose checkpoint or restore ended without pausing and resuming. */
  releaseShell(): void {
    if (this.shellHeld && !this.paused) {
      this.resume();
    }
  }

  /** Whether shell requests are held now (the kernel is, or is about to be, away). */
  get holdsShell(): boolean {
    return this.paused || this.shellHeld;
  }

  /** Publishes a message of the supervisor's own on iopub, signed for Jupyter. */
  publish(message: Message, topic = `kernel-checkpoint.${message.header.msg_type}`): Promise<void> {
    return this.frontOut.iopub.send(encode(message, this.frontSigner, [Buffer.from(topic)]));
  }

  /** Replies to a client on a request channel, signed for Jupyter. */
  reply(channel: RequestChannel, identities: Buffer[], message: Message): Promise<void> {
    return this.frontOut[channel].send(encode(message, this.frontSigner, identities));
  }

  /** Sends a request of the supervisor's own to the kernel (replies come back without a client). */
  sendToKernel(channel: RequestChannel, message: Message): Promise<void> {
    if (!this.back) {
      return Promise.resolve();
    }
    return this.back.outboxes[channel].send(encode(message, this.backSigner, []));
  }

  close(): void {
    this.closed = true;
    this.disconnectKernel();
    for (const socket of Object.values(this.front)) {
      socket.close();
    }
  }

  /** Resolves true once the kernel's iopub is proven live, false after `timeoutMs`. */
  private waitForIopub(timeoutMs: number): Promise<boolean> {
    return new Promise(resolve => {
      const timer = setTimeout(() => {
        this.iopubWaiters = this.iopubWaiters.filter(waiter => waiter !== done);
        resolve(false);
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.iopubWaiters.push(done);
    });
  }

  private async readFront(channel: RequestChannel): Promise<void> {
    try {
      for await (const raw of this.front[channel]) {
        const frames = splitFrames(raw);
        if (!frames) {
          log.warn(`dropped a malformed message on ${channel}`);
          continue;
        }
        if (!this.frontSigner.verify(frames.signature, frames.parts)) {
          log.warn(`dropped a message with a bad signature on ${channel}`);
          continue;
        }
        let header: Header;
        try {
          header = peekHeader(frames);
        } catch {
          log.warn(`dropped a message with an unreadable header on ${channel}`);
          continue;
        }
        if (this.handlers.onClientRequest(channel, frames, header)) {
          continue;
        }
        if (this.paused || !this.back || (this.shellHeld && channel === 'shell')) {
          this.held.push({ channel, frames, header });
        } else {
          this.toKernel(channel, frames, header);
        }
      }
    } catch (error) {
      this.loopEnded(`front ${channel}`, error);
    }
  }

  private toKernel(channel: RequestChannel, frames: Frames, header: Header): void {
    if (!this.back) {
      this.held.push({ channel, frames, header });
      return;
    }
    if (channel === 'shell') {
      this.outstanding.set(header.msg_id, { frames, header });
    }
    void this.back.outboxes[channel].send(
      this.sameKey ? passFrames(frames) : joinFrames(frames, this.backSigner)
    );
  }

  /**
   * Forgets and returns the shell requests the kernel process never answered: when that process
   * is replaced by a restore, they are answered or sent again by the supervisor.
   */
  takeOutstanding(): OutstandingRequest[] {
    const requests = [...this.outstanding.values()];
    this.outstanding.clear();
    return requests;
  }

  /** Sends requests to the kernel again, before anything held since. */
  requeue(requests: OutstandingRequest[]): void {
    this.held.unshift(...requests.map(request => ({ channel: 'shell' as const, ...request })));
  }

  private async readBack(back: BackSockets, channel: RequestChannel): Promise<void> {
    try {
      for await (const raw of back[channel]) {
        const frames = splitFrames(raw);
        if (!frames || frames.identities.length === 0) {
          // A reply to the supervisor's own request: nobody to route it to.
          continue;
        }
        if (channel === 'shell') {
          const parent = parentMsgId(frames);
          if (parent) {
            this.outstanding.delete(parent);
          }
        }
        if (
          channel !== 'stdin' &&
          frames.parts[0].includes(KERNEL_INFO_REPLY) &&
          msgTypeOf(frames) === 'kernel_info_reply'
        ) {
          this.kernelInfo = peekContent(frames);
        }
        void this.frontOut[channel].send(this.toClients(frames));
      }
    } catch (error) {
      if (this.back === back) {
        this.loopEnded(`kernel ${channel}`, error);
      }
    }
  }

  private async readBackIopub(back: BackSockets): Promise<void> {
    try {
      for await (const raw of back.iopub) {
        const frames = splitFrames(raw);
        if (!frames) {
          continue;
        }
        const msgType = msgTypeOf(frames);
        for (const waiter of this.iopubWaiters.splice(0)) {
          waiter();
        }
        if (msgType === 'iopub_welcome') {
          // Meant for us, the kernel's only subscriber; clients get our own welcome.
          continue;
        }
        if (this.handlers.onKernelIopub(frames, msgType)) {
          void this.frontOut.iopub.send(this.toClients(frames));
        }
      }
    } catch (error) {
      if (this.back === back) {
        this.loopEnded('kernel iopub', error);
      }
    }
  }

  /** A kernel's message, signed for Jupyter. */
  private toClients(frames: Frames): Buffer[] {
    return this.sameKey ? passFrames(frames) : joinFrames(frames, this.frontSigner);
  }

  /** Answers each client subscription with a signed iopub_welcome (JEP 65). */
  private async readSubscriptions(): Promise<void> {
    try {
      for await (const [event] of this.front.iopub) {
        if (event.length === 0 || event[0] !== 1) {
          continue;
        }
        const topic = event.subarray(1);
        const welcome: Message = {
          header: {
            msg_id: `${this.session}-welcome-${Date.now()}`,
            msg_type: 'iopub_welcome',
            session: this.session,
            username: 'kernel-checkpoint',
            date: new Date().toISOString(),
            version: JUPYTER_PROTOCOL_VERSION
          },
          parent_header: {},
          metadata: {},
          content: { subscription: topic.toString('utf8') },
          buffers: []
        };
        void this.frontOut.iopub.send(encode(welcome, this.frontSigner, [topic]));
      }
    } catch (error) {
      this.loopEnded('iopub subscriptions', error);
    }
  }

  /**
   * Heartbeats are echoed by the supervisor itself: Jupyter learns of a dead kernel from the
   * supervisor's exit, and a kernel under snapshot must not look dead.
   */
  private async readHeartbeat(): Promise<void> {
    try {
      for await (const frames of this.front.hb) {
        void this.frontOut.hb.send(frames);
      }
    } catch (error) {
      this.loopEnded('heartbeat', error);
    }
  }

  private loopEnded(what: string, error: unknown): void {
    if (!this.closed) {
      log.debug(`${what} reader ended: ${(error as Error)?.message ?? error}`);
    }
  }
}

/** A kernel message's type, '' when its header cannot be read (it is relayed all the same). */
function msgTypeOf(frames: Frames): string {
  try {
    return stringField(frames.parts[0], 'msg_type') ?? '';
  } catch {
    return '';
  }
}

/** The msg_id of the request a kernel message answers, if it has one. */
function parentMsgId(frames: Frames): string | null {
  try {
    return stringField(frames.parts[1], 'msg_id');
  } catch {
    return null;
  }
}

/** A socket's send queue; a failed send is logged with the socket's name. */
function outboxOf(socket: zmq.Writable & zmq.Socket, name: string): SendQueue {
  return new SendQueue<Buffer[]>(socket, error =>
    log.warn(`send on ${name} failed: ${error.message}`)
  );
}

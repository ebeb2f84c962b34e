// KernelClient against a fake kernel on ipc sockets: the handshake, the comm protocol, and the
// failures the CLI must tell apart (wrong key, nobody there, not checkpointable, a kernel that
// stops mid-request).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import * as zmq from 'zeromq';

import {
  decode,
  encode,
  endpoint,
  newMessage,
  Signer,
  type ConnectionInfo
} from '../../supervisor/wire';
import { ConnectError, HEARTBEAT_SILENCE_MS, KernelClient, RequestFailed } from '../kernel-client';

interface FakeOptions {
  /**
   * checkpoint: answers the comm as the supervisor does; plain: closes it as ipykernel does for
   * an unknown target; busy: answers nothing on shell, as ipykernel while a cell runs.
   */
  mode: 'checkpoint' | 'plain' | 'busy';
  /** Sends a signed iopub_welcome to each subscriber, as the supervisor does (JEP 65). */
  welcome?: boolean;
  /** Answers kernel_info_request on control, as ipykernel does even while a cell runs. */
  control?: boolean;
  /** Leaves this many comm_open unanswered (as if the answer went before the subscription). */
  loseHellos?: number;
  /** Never answers a comm_msg request (a supervisor that hangs or dies mid-request). */
  hangRequests?: boolean;
}

class FakeKernel {
  readonly shell = new zmq.Router({ linger: 0 });
  readonly control = new zmq.Router({ linger: 0 });
  readonly iopub = new zmq.XPublisher({ linger: 0 });
  readonly hb = new zmq.Reply({ linger: 0 });
  readonly signer: Signer;
  /** Message types received, on shell and (as control:TYPE) on control. */
  received: string[] = [];
  heartbeatMuted = false;
  private tail: Promise<unknown> = Promise.resolve();
  private hellosLost = 0;

  constructor(
    readonly info: ConnectionInfo,
    readonly options: FakeOptions
  ) {
    this.signer = new Signer(info.key);
  }

  async start(): Promise<void> {
    await this.shell.bind(endpoint(this.info, 'shell'));
    await this.control.bind(endpoint(this.info, 'control'));
    await this.iopub.bind(endpoint(this.info, 'iopub'));
    await this.hb.bind(endpoint(this.info, 'hb'));
    void this.serveShell();
    void this.serveControl();
    void this.serveSubscriptions();
    void this.serveHb();
  }

  private publish(type: string, content: Record<string, unknown>, parent: any): void {
    const frames = encode(newMessage(type, content, { session: 'fake', parent }), this.signer);
    this.tail = this.tail.then(() => this.iopub.send([Buffer.from(type), ...frames]));
  }

  private async serveSubscriptions(): Promise<void> {
    try {
      for await (const [event] of this.iopub) {
        if (this.options.welcome && event[0] === 1) {
          this.publish('iopub_welcome', { subscription: event.subarray(1).toString() }, {});
        }
      }
    } catch {
      // closed
    }
  }

  private async serveHb(): Promise<void> {
    try {
      for await (const frames of this.hb) {
        while (this.heartbeatMuted && !this.hb.closed) {
          await new Promise(resolve => setTimeout(resolve, 50));
        }
        await this.hb.send(frames);
      }
    } catch {
      // closed
    }
  }

  /** Hands each verified message on `socket` to `handle`; drops, as a kernel does, the rest. */
  private async serve(
    socket: zmq.Router,
    handle: (message: any, identities: Buffer[]) => Promise<void> | void
  ): Promise<void> {
    try {
      for await (const frames of socket) {
        let decoded;
        try {
          decoded = decode(frames, this.signer);
        } catch {
          continue; // a badly signed message is dropped without an answer
        }
        await handle(decoded.message, decoded.identities);
      }
    } catch {
      // closed
    }
  }

  private serveControl(): Promise<void> {
    return this.serve(this.control, async (message, identities) => {
      this.received.push(`control:${message.header.msg_type}`);
      if (this.options.control && message.header.msg_type === 'kernel_info_request') {
        const reply = newMessage(
          'kernel_info_reply',
          { status: 'ok' },
          { session: 'fake', parent: message.header }
        );
        await this.control.send(encode(reply, this.signer, identities));
      }
    });
  }

  private serveShell(): Promise<void> {
    return this.serve(this.shell, message => {
      const type = message.header.msg_type;
      this.received.push(type);
      if (this.options.mode === 'busy') {
        return;
      }
      if (type === 'comm_open') {
        this.answerCommOpen(message);
      } else if (type === 'comm_msg' && !this.options.hangRequests) {
        this.answerRequest(message);
      }
    });
  }

  private answerCommOpen(message: any): void {
    const commId = message.content.comm_id;
    if (this.options.mode === 'plain') {
      this.publish('comm_close', { comm_id: commId, data: {} }, message.header);
    } else if (this.hellosLost < (this.options.loseHellos ?? 0)) {
      this.hellosLost += 1;
    } else {
      expect(message.content.target_name).toBe('kernel_checkpoint');
      expect(message.content.data).toEqual({ protocol_version: '1.0', client: 'cli' });
      this.publish(
        'comm_msg',
        { comm_id: commId, data: { type: 'hello', status: STATUS } },
        message.header
      );
    }
  }

  private answerRequest(message: any): void {
    const { comm_id: commId, data } = message.content;
    const answer = (d: Record<string, unknown>) =>
      this.publish('comm_msg', { comm_id: commId, data: d }, message.header);
    // Another client's answer first: it must be ignored.
    answer({ type: 'reply', request_id: 'someone-else', action: 'list', current_id: null });
    if (data.checkpoint_id === 'missing') {
      answer({
        type: 'error',
        request_id: data.request_id,
        action: data.action,
        error: { code: 'unknown_checkpoint', message: 'No checkpoint missing.' }
      });
      return;
    }
    for (const stage of ['preparing', 'saving']) {
      answer({ type: 'progress', request_id: data.request_id, action: data.action, stage });
    }
    answer({
      type: 'reply',
      request_id: data.request_id,
      action: data.action,
      current_id: null,
      checkpoints: []
    });
  }

  close(): void {
    this.shell.close();
    this.control.close();
    this.iopub.close();
    this.hb.close();
  }
}

const STATUS = {
  protocol_version: '1.0',
  engine: { name: 'criu', version: '4.2' },
  engine_ok: true,
  current_id: null,
  kernel_name: 'python3',
  notebook_path: null,
  busy: null,
  plugin: true
};

/** Timers alive now (setTimeout/setInterval not yet fired or cleared). */
function timers(): number {
  return process.getActiveResourcesInfo().filter(kind => kind === 'Timeout').length;
}

describe('KernelClient', () => {
  let dir: string;
  let kernel: FakeKernel | null = null;
  let client: KernelClient | null = null;

  const info = (key = 'secret'): ConnectionInfo => ({
    transport: 'ipc',
    ip: path.join(dir, 'k'),
    shell_port: 1,
    iopub_port: 2,
    stdin_port: 3,
    control_port: 4,
    hb_port: 5,
    key,
    signature_scheme: 'hmac-sha256'
  });

  const start = async (options: FakeOptions): Promise<FakeKernel> => {
    kernel = new FakeKernel(info(), options);
    await kernel.start();
    return kernel;
  };

  const connect = (key?: string): KernelClient => {
    client = new KernelClient(info(key), { connectionFile: 'kernel-x.json' });
    client.connect();
    return client;
  };

  const open = async (): Promise<KernelClient> => {
    const c = connect();
    await c.handshake(5000);
    await c.openComm(5000);
    return c;
  };

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'kernel-client-'));
  });

  afterEach(async () => {
    await client?.close();
    kernel?.close();
    client = null;
    kernel = null;
    rmSync(dir, { recursive: true, force: true });
  });

  it('opens the comm, reports progress, returns the reply, and sends the kernel nothing else', async () => {
    const fake = await start({ mode: 'checkpoint', welcome: true, control: true });
    const c = await open();
    const stages: string[] = [];
    const answer = await c.request('list', { scope: 'all' }, p => stages.push(p.stage), 5000);
    expect(answer).toMatchObject({ type: 'reply', action: 'list', checkpoints: [] });
    expect(answer.request_id).not.toBe('someone-else');
    expect(stages).toEqual(['preparing', 'saving']);
    await c.close();
    // The comm is closed on the way out (the supervisor forgets it).
    for (let i = 0; i < 40 && !fake.received.includes('comm_close'); i++) {
      await new Promise(resolve => setTimeout(resolve, 50));
    }
    // No kernel_info (on shell it waits for a running cell; it makes IPython draw a random tip).
    expect(fake.received).toEqual(['comm_open', 'comm_msg', 'comm_close']);
  });

  it('turns an ErrorReply into RequestFailed with its code', async () => {
    await start({ mode: 'checkpoint', welcome: true });
    const c = await open();
    const failure = await c
      .request('restore', { checkpoint_id: 'missing' }, () => undefined, 5000)
      .catch(e => e);
    expect(failure).toBeInstanceOf(RequestFailed);
    expect((failure as RequestFailed).reply.error.code).toBe('unknown_checkpoint');
  });

  it('leaves no timer behind once closed (the process can exit at once)', async () => {
    await start({ mode: 'checkpoint', welcome: true });
    const before = timers();
    const c = await open();
    await c.request('status', {}, () => undefined, 5000);
    await c.close();
    expect(timers()).toBeLessThanOrEqual(before);
  });

  it('says the key is wrong at once when the welcome does not verify', async () => {
    const fake = await start({ mode: 'checkpoint', welcome: true, control: true });
    const c = connect('another key');
    const started = Date.now();
    const failure = await c.handshake(10_000).catch(e => e);
    expect(failure).toBeInstanceOf(ConnectError);
    expect((failure as ConnectError).kind).toBe('wrong_key');
    expect((failure as Error).message).toMatch(/key in the connection file is probably wrong/);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(fake.received).toEqual([]);
  });

  it('says the key is wrong when a kernel without welcome answers only its heartbeat', async () => {
    const fake = await start({ mode: 'checkpoint', control: true });
    const c = connect('another key');
    await c.handshake(1000);
    const failure = await c.openComm(1000).catch(e => e);
    expect((failure as ConnectError).kind).toBe('wrong_key');
    expect((failure as Error).message).toMatch(/key in the connection file is probably wrong/);
    expect(fake.received).toEqual([]);
  });

  it('says nobody is there when nothing answers, not even the heartbeat', async () => {
    const c = connect();
    const failure = await c.handshake(500).catch(e => e);
    expect((failure as ConnectError).kind).toBe('no_kernel');
    expect((failure as Error).message).toMatch(/No kernel answers at kernel-x.json/);
  });

  it('calls a kernel that closes the comm not checkpointable', async () => {
    await start({ mode: 'plain', welcome: true });
    const c = connect();
    await c.handshake(5000);
    const failure = await c.openComm(5000).catch(e => e);
    expect((failure as ConnectError).kind).toBe('not_checkpointable');
    expect((failure as Error).message).toMatch(/closed the kernel_checkpoint comm/);
  });

  it('calls a busy kernel that answers control but not the comm not checkpointable, not a wrong key', async () => {
    const fake = await start({ mode: 'busy', control: true });
    const c = connect();
    await c.handshake(1000);
    const failure = await c.openComm(1000).catch(e => e);
    expect((failure as ConnectError).kind).toBe('not_checkpointable');
    expect(fake.received).toContain('control:kernel_info_request');
  });

  it('calls a kernel whose messages verify but which never answers the comm not checkpointable', async () => {
    const fake = await start({ mode: 'busy', welcome: true, control: true });
    const c = connect();
    await c.handshake(5000);
    const failure = await c.openComm(300).catch(e => e);
    expect((failure as ConnectError).kind).toBe('not_checkpointable');
    // The welcome proved the key: the kernel is not asked anything on control.
    expect(fake.received).toEqual(['comm_open']);
  });

  it('asks again when a kernel without welcome lost the first hello', async () => {
    const fake = await start({ mode: 'checkpoint', loseHellos: 1 });
    const c = connect();
    await c.handshake(5000);
    expect(await c.openComm(5000)).toEqual(STATUS);
    expect(fake.received).toEqual(['comm_open', 'comm_open']);
  });

  /** A checkpoint request the fake kernel never answers, under way for `ms`. */
  const hangingRequest = async (ms: number) => {
    const fake = await start({ mode: 'checkpoint', welcome: true, hangRequests: true });
    const c = await open();
    const pending = c.request('checkpoint', {}, () => undefined, 3600_000).catch(e => e);
    await new Promise(resolve => setTimeout(resolve, ms));
    return { fake, pending };
  };

  it('stops waiting, saying the kernel stopped, when its connection closes mid-request', async () => {
    const { fake, pending } = await hangingRequest(200);
    const killed = Date.now();
    fake.close();
    const failure = await pending;
    expect(failure).toBeInstanceOf(ConnectError);
    expect((failure as ConnectError).kind).toBe('stopped');
    expect((failure as Error).message).toMatch(/The kernel of kernel-x.json stopped/);
    expect(Date.now() - killed).toBeLessThan(2000);
  });

  it('does not take a pause of its own for a silent kernel', async () => {
    const { pending } = await hangingRequest(600);
    // This process is held up (a loaded machine) longer than the silence bound; the kernel's
    // echoes wait in the socket meanwhile.
    const until = Date.now() + HEARTBEAT_SILENCE_MS + 1000;
    while (Date.now() < until) {
      // busy
    }
    const outcome = await Promise.race([
      pending,
      new Promise(resolve => setTimeout(() => resolve('still waiting'), 1500))
    ]);
    expect(outcome).toBe('still waiting');
  }, 15_000);

  it('stops waiting, saying the kernel stopped, when its heartbeat falls silent mid-request', async () => {
    const { fake, pending } = await hangingRequest(600);
    const muted = Date.now();
    fake.heartbeatMuted = true;
    const failure = await pending;
    expect((failure as ConnectError).kind).toBe('stopped');
    expect((failure as Error).message).toMatch(/heartbeat has been silent/);
    expect(Date.now() - muted).toBeLessThan(HEARTBEAT_SILENCE_MS + 1500);
  }, 15_000);
});

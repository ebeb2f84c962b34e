// KernelClient against a fake kernel on ipc sockets: the handshake, the comm protocol, and the
// failures the CLI must tell apart (wrong key, nobody there, not checkpointable).
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
import { ConnectError, KernelClient, RequestFailed } from '../kernel-client';

type Mode = 'checkpoint' | 'plain' | 'silent-comm';

class FakeKernel {
  readonly shell = new zmq.Router({ linger: 0 });
  readonly iopub = new zmq.Publisher({ linger: 0 });
  readonly hb = new zmq.Reply({ linger: 0 });
  readonly signer: Signer;
  received: string[] = [];
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    readonly info: ConnectionInfo,
    readonly mode: Mode
  ) {
    this.signer = new Signer(info.key);
  }

  async start(): Promise<void> {
    await this.shell.bind(endpoint(this.info, 'shell'));
    await this.iopub.bind(endpoint(this.info, 'iopub'));
    await this.hb.bind(endpoint(this.info, 'hb'));
    void this.serveShell();
    void this.serveHb();
  }

  private publish(type: string, content: Record<string, unknown>, parent: any): void {
    const frames = encode(newMessage(type, content, { session: 'fake', parent }), this.signer);
    this.tail = this.tail.then(() => this.iopub.send([Buffer.from(type), ...frames]));
  }

  private async serveHb(): Promise<void> {
    try {
      for await (const frames of this.hb) {
        await this.hb.send(frames);
      }
    } catch {
      // closed
    }
  }

  private async serveShell(): Promise<void> {
    try {
      for await (const frames of this.shell) {
        let decoded;
        try {
          decoded = decode(frames, this.signer);
        } catch {
          continue; // as a kernel does: a badly signed message is dropped without an answer
        }
        const { identities, message } = decoded;
        const type = message.header.msg_type;
        this.received.push(type);
        if (type === 'kernel_info_request') {
          this.publish('status', { execution_state: 'busy' }, message.header);
          await this.shell.send(
            encode(
              newMessage(
                'kernel_info_reply',
                { status: 'ok' },
                { session: 'fake', parent: message.header }
              ),
              this.signer,
              identities
            )
          );
          this.publish('status', { execution_state: 'idle' }, message.header);
        } else if (type === 'comm_open') {
          const commId = message.content.comm_id;
          if (this.mode === 'plain') {
            this.publish('comm_close', { comm_id: commId, data: {} }, message.header);
          } else if (this.mode === 'checkpoint') {
            expect(message.content.target_name).toBe('kernel_checkpoint');
            expect(message.content.data).toEqual({ protocol_version: '1.0', client: 'cli' });
            this.publish(
              'comm_msg',
              { comm_id: commId, data: { type: 'hello', status: STATUS } },
              message.header
            );
          }
        } else if (type === 'comm_msg') {
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
          } else {
            answer({
              type: 'progress',
              request_id: data.request_id,
              action: data.action,
              stage: 'preparing'
            });
            answer({
              type: 'progress',
              request_id: data.request_id,
              action: data.action,
              stage: 'saving'
            });
            answer({
              type: 'reply',
              request_id: data.request_id,
              action: data.action,
              current_id: null,
              checkpoints: []
            });
          }
        }
      }
    } catch {
      // closed
    }
  }

  close(): void {
    this.shell.close();
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

  const start = async (mode: Mode): Promise<void> => {
    kernel = new FakeKernel(info(), mode);
    await kernel.start();
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

  it('does kernel_info, opens the comm, reports progress and returns the reply', async () => {
    await start('checkpoint');
    client = new KernelClient(info());
    client.connect();
    const reply = await client.handshake(5000);
    expect(reply.header.msg_type).toBe('kernel_info_reply');
    expect(await client.openComm(5000)).toEqual(STATUS);
    const stages: string[] = [];
    const answer = await client.request('list', { scope: 'all' }, p => stages.push(p.stage), 5000);
    expect(answer).toMatchObject({ type: 'reply', action: 'list', checkpoints: [] });
    expect(answer.request_id).not.toBe('someone-else');
    expect(stages).toEqual(['preparing', 'saving']);
    await client.close();
    // The comm is closed on the way out (the supervisor forgets it).
    for (let i = 0; i < 40 && !kernel!.received.includes('comm_close'); i++) {
      await new Promise(resolve => setTimeout(resolve, 50));
    }
    expect(kernel!.received).toEqual([
      'kernel_info_request',
      'comm_open',
      'comm_msg',
      'comm_close'
    ]);
  });

  it('turns an ErrorReply into RequestFailed with its code', async () => {
    await start('checkpoint');
    client = new KernelClient(info());
    client.connect();
    await client.handshake(5000);
    await client.openComm(5000);
    const failure = await client
      .request('restore', { checkpoint_id: 'missing' }, () => undefined, 5000)
      .catch(e => e);
    expect(failure).toBeInstanceOf(RequestFailed);
    expect((failure as RequestFailed).reply.error.code).toBe('unknown_checkpoint');
  });

  it('says the key is wrong when only the heartbeat answers', async () => {
    await start('checkpoint');
    client = new KernelClient(info('another key'), { connectionFile: 'kernel-x.json' });
    client.connect();
    const started = Date.now();
    const failure = await client.handshake(1000).catch(e => e);
    expect(failure).toBeInstanceOf(ConnectError);
    expect((failure as ConnectError).kind).toBe('wrong_key');
    expect((failure as Error).message).toMatch(/key in the connection file is probably wrong/);
    expect(Date.now() - started).toBeLessThan(6000);
    expect(kernel!.received).toEqual([]);
  });

  it('says nobody is there when neither shell nor heartbeat answers', async () => {
    client = new KernelClient(info());
    client.connect();
    const failure = await client.handshake(500).catch(e => e);
    expect((failure as ConnectError).kind).toBe('no_kernel');
  });

  it('calls a kernel that closes the comm not checkpointable', async () => {
    await start('plain');
    client = new KernelClient(info());
    client.connect();
    await client.handshake(5000);
    const failure = await client.openComm(5000).catch(e => e);
    expect((failure as ConnectError).kind).toBe('not_checkpointable');
    expect((failure as Error).message).toMatch(/closed the kernel_checkpoint comm/);
  });

  it('calls a kernel that never answers the comm not checkpointable, after the timeout', async () => {
    await start('silent-comm');
    client = new KernelClient(info());
    client.connect();
    await client.handshake(5000);
    const failure = await client.openComm(300).catch(e => e);
    expect((failure as ConnectError).kind).toBe('not_checkpointable');
  });
});

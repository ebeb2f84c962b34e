// A small Jupyter client for tests: a shell DEALER and an iopub SUBSCRIBER to a supervisor's
// front ports, speaking the wire protocol of wire.ts. Enough to run cells and read their output.

import { randomUUID } from 'node:crypto';
import net from 'node:net';
import * as zmq from 'zeromq';

import {
  decode,
  encode,
  endpoint,
  newMessage,
  Signer,
  type ConnectionInfo,
  type Message
} from '../wire';

/** A connection file for a supervisor on free localhost ports. */
export async function freeConnection(): Promise<ConnectionInfo> {
  const ports: number[] = [];
  const servers: net.Server[] = [];
  for (let i = 0; i < 5; i++) {
    const server = net.createServer();
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
    ports.push((server.address() as net.AddressInfo).port);
    servers.push(server);
  }
  await Promise.all(servers.map(server => new Promise(resolve => server.close(resolve))));
  const [shell_port, iopub_port, stdin_port, control_port, hb_port] = ports;
  return {
    transport: 'tcp',
    ip: '127.0.0.1',
    shell_port,
    iopub_port,
    stdin_port,
    control_port,
    hb_port,
    key: randomUUID(),
    signature_scheme: 'hmac-sha256'
  };
}

export interface CellResult {
  status: string;
  stdout: string;
  error: Record<string, any> | null;
}

export class TestClient {
  private readonly signer: Signer;
  private readonly session = randomUUID();
  private readonly shell = new zmq.Dealer({ linger: 0, routingId: randomUUID() });
  private readonly control = new zmq.Dealer({ linger: 0, routingId: randomUUID() });
  private readonly iopub = new zmq.Subscriber({ linger: 0 });
  private readonly iopubMessages: Message[] = [];
  private readonly replies: Message[] = [];
  private wake: () => void = () => undefined;

  constructor(private readonly info: ConnectionInfo) {
    this.signer = new Signer(info.key, info.signature_scheme);
  }

  /** Connects and waits for the welcome on iopub (no output is missed after that). */
  async connect(timeoutMs = 30000): Promise<void> {
    this.iopub.subscribe();
    this.iopub.connect(endpoint(this.info, 'iopub'));
    this.shell.connect(endpoint(this.info, 'shell'));
    this.control.connect(endpoint(this.info, 'control'));
    void this.read(this.iopub, this.iopubMessages);
    void this.read(this.shell, this.replies);
    void this.read(this.control, this.replies);
    await this.until(
      () => this.iopubMessages.some(m => m.header.msg_type === 'iopub_welcome'),
      timeoutMs
    );
  }

  close(): void {
    for (const socket of [this.shell, this.control, this.iopub]) {
      socket.close();
    }
  }

  /** Sends a request on shell or control; returns its msg_id. */
  async send(channel: 'shell' | 'control', msgType: string, content: object): Promise<string> {
    const message = newMessage(msgType, content, { session: this.session, username: 'test' });
    await (channel === 'shell' ? this.shell : this.control).send(encode(message, this.signer));
    return message.header.msg_id;
  }

  /** Waits for the reply to request `msgId`. */
  async reply(msgId: string, timeoutMs = 60000): Promise<Message> {
    let found: Message | undefined;
    await this.until(() => {
      found = this.replies.find(m => m.parent_header.msg_id === msgId);
      return found !== undefined;
    }, timeoutMs);
    return found!;
  }

  /** Where `message` came in the iopub stream (its order of arrival). */
  iopubIndex(message: Message): number {
    return this.iopubMessages.indexOf(message);
  }

  /** Waits for an iopub message that `match`es (one already received counts). */
  async iopubMessage(match: (message: Message) => boolean, timeoutMs = 30000): Promise<Message> {
    let found: Message | undefined;
    await this.until(() => {
      found = this.iopubMessages.find(match);
      return found !== undefined;
    }, timeoutMs);
    return found!;
  }

  /** Runs a cell and collects its reply and stdout (until the kernel is idle again). */
  async execute(code: string, timeoutMs = 60000): Promise<CellResult> {
    const msgId = await this.send('shell', 'execute_request', {
      code,
      silent: false,
      store_history: true,
      user_expressions: {},
      allow_stdin: false,
      stop_on_error: true
    });
    const reply = await this.reply(msgId, timeoutMs);
    const ours = (m: Message) => m.parent_header.msg_id === msgId;
    await this.until(
      () =>
        this.iopubMessages.some(
          m => ours(m) && m.header.msg_type === 'status' && m.content.execution_state === 'idle'
        ),
      timeoutMs
    );
    const outputs = this.iopubMessages.filter(ours);
    return {
      status: reply.content.status,
      stdout: outputs
        .filter(m => m.header.msg_type === 'stream' && m.content.name === 'stdout')
        .map(m => m.content.text)
        .join(''),
      error: outputs.find(m => m.header.msg_type === 'error')?.content ?? null
    };
  }

  /** Runs a cell that must succeed and prints one JSON value; returns that value. */
  async value(expression: string): Promise<unknown> {
    const result = await this.execute(`import json as _j; print(_j.dumps(${expression}))`);
    if (result.status !== 'ok') {
      throw new Error(`cell failed: ${JSON.stringify(result.error)}`);
    }
    return JSON.parse(result.stdout.trim());
  }

  private async read(socket: zmq.Dealer | zmq.Subscriber, into: Message[]): Promise<void> {
    try {
      for await (const raw of socket) {
        try {
          into.push(decode(raw, this.signer).message);
        } catch {
          // Not for us.
        }
        this.wake();
      }
    } catch {
      // Closed.
    }
  }

  private async until(done: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      if (Date.now() > deadline) {
        throw new Error('timed out waiting for the kernel');
      }
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, 50);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }
}

// A Jupyter client of one fork, for the supervisor's own searches (bisect): it asks the fork's
// kernel to evaluate expressions (execute_request with user_expressions, silent, so nothing of
// the fork's history moves) and ends the fork with a shutdown_request. The fork is a kernel of
// its own, behind its own supervisor; nothing here touches the kernel this supervisor runs.

import { existsSync, readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';

import * as zmq from 'zeromq';

import { SendQueue } from './send-queue';
import { decode, encode, endpoint, newMessage, Signer, type ConnectionInfo } from './wire';

/** What a user expression gave: its text/plain repr, or the error it raised. */
export type ExpressionResult =
  { status: 'ok'; text: string } | { status: 'error'; ename: string; evalue: string };

/** How long a fork may take to end after its shutdown_request before we stop waiting. */
const SHUTDOWN_WAIT_MS = 30_000;

export class ForkClient {
  private readonly session = randomUUID();
  private readonly signer: Signer;
  private readonly shell: zmq.Dealer;
  private readonly control: zmq.Dealer;
  private readonly shellOut: SendQueue;
  private readonly controlOut: SendQueue;
  private readonly waiting = new Map<string, (content: Record<string, any>) => void>();
  private closed = false;
  private ending: Promise<void> | null = null;
  private shutdownAsked: Promise<void> | null = null;

  constructor(private readonly connectionFile: string) {
    const info = JSON.parse(readFileSync(connectionFile, 'utf8')) as ConnectionInfo;
    this.signer = new Signer(info.key, info.signature_scheme ?? 'hmac-sha256');
    this.shell = new zmq.Dealer({ linger: 0, routingId: `${this.session}-shell` });
    this.control = new zmq.Dealer({ linger: 1000, routingId: `${this.session}-control` });
    this.shellOut = new SendQueue(this.shell, () => undefined);
    this.controlOut = new SendQueue(this.control, () => undefined);
    this.shell.connect(endpoint(info, 'shell'));
    this.control.connect(endpoint(info, 'control'));
    void this.read(this.shell);
    void this.read(this.control);
  }

  private async read(socket: zmq.Dealer): Promise<void> {
    try {
      for await (const frames of socket) {
        let message;
        try {
          message = decode(frames, this.signer).message;
        } catch {
          continue; // not signed with the fork's key: not an answer to us
        }
        const parent = (message.parent_header as { msg_id?: string }).msg_id;
        const waiter = parent ? this.waiting.get(parent) : undefined;
        if (waiter) {
          this.waiting.delete(parent!);
          waiter(message.content);
        }
      }
    } catch (error) {
      if (!this.closed) {
        throw error;
      }
    }
  }

  private ask(
    queue: SendQueue,
    msgType: string,
    content: Record<string, unknown>,
    timeoutMs: number
  ): Promise<Record<string, any>> {
    const message = newMessage(msgType, content, { session: this.session });
    const id = message.header.msg_id;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`the fork did not answer its ${msgType} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.waiting.set(id, content => {
        clearTimeout(timer);
        resolve(content);
      });
      void queue.send(encode(message, this.signer));
    });
  }

  /**
   * Runs `code` (silently: no history, no execution count) and evaluates `expressions` after it,
   * as IPython's user_expressions do: each gives its repr or the error it raised. Rejects when
   * the code itself raised.
   */
  async execute(
    code: string,
    expressions: Record<string, string>,
    timeoutMs: number
  ): Promise<Record<string, ExpressionResult>> {
    const reply = await this.ask(
      this.shellOut,
      'execute_request',
      {
        code,
        silent: true,
        store_history: false,
        user_expressions: expressions,
        allow_stdin: false,
        stop_on_error: false
      },
      timeoutMs
    );
    if (reply.status !== 'ok') {
      throw new Error(`${reply.ename ?? 'Error'}: ${reply.evalue ?? ''}`.trim());
    }
    const out: Record<string, ExpressionResult> = {};
    for (const [name, value] of Object.entries(
      (reply.user_expressions ?? {}) as Record<string, any>
    )) {
      out[name] =
        value?.status === 'ok'
          ? { status: 'ok', text: String(value.data?.['text/plain'] ?? '') }
          : {
              status: 'error',
              ename: String(value?.ename ?? 'Error'),
              evalue: String(value?.evalue ?? '')
            };
    }
    return out;
  }

  /**
   * Ends the fork and waits until its supervisor has removed its connection file; every call
   * waits for the same end.
   */
  shutdown(): Promise<void> {
    this.ending ??= this.end();
    return this.ending;
  }

  /**
   * Sends the shutdown_request and waits for its reply only (at most `timeoutMs`): the fork then
   * ends by itself. For a supervisor that is stopping and cannot wait for the fork to be gone.
   */
  requestShutdown(timeoutMs = 2000): Promise<void> {
    this.shutdownAsked ??= this.ask(
      this.controlOut,
      'shutdown_request',
      { restart: false },
      SHUTDOWN_WAIT_MS
    ).then(
      () => undefined,
      () => undefined
    );
    return Promise.race([
      this.shutdownAsked,
      new Promise<void>(resolve => setTimeout(resolve, timeoutMs).unref())
    ]);
  }

  /** Closes this client's sockets (the fork itself is not touched). */
  close(): void {
    if (!this.closed) {
      this.closed = true;
      this.shell.close();
      this.control.close();
    }
  }

  private async end(): Promise<void> {
    try {
      await this.requestShutdown(SHUTDOWN_WAIT_MS);
      const deadline = Date.now() + SHUTDOWN_WAIT_MS;
      while (existsSync(this.connectionFile) && Date.now() < deadline) {
        await new Promise(resolve => setTimeout(resolve, 20));
      }
    } finally {
      this.close();
    }
  }
}

// The supervisor's end of the agent channel to the in-kernel Python plugin.
//
// The plugin binds a ROUTER inside the kernel; the supervisor connects a DEALER to it, and
// disconnects around every snapshot like every other socket to the kernel. Messages are single
// JSON frames (AgentCommand one way, AgentReport the other; see the protocol schema). The
// channel is private: its endpoint lives in the kernel's 0700 ipc folder.

import { existsSync } from 'node:fs';
import * as zmq from 'zeromq';

import type { AgentCommand, AgentReport, Request } from '../../protocol/checkpoint-protocol';
import { log } from './log';
import { SendQueue } from './send-queue';

export class AgentTimeout extends Error {}

interface Waiter {
  type: AgentReport['type'];
  resolve: (report: AgentReport) => void;
  reject: (error: Error) => void;
}

export class AgentChannel {
  private socket: zmq.Dealer | null = null;
  private outbox: SendQueue<Buffer> | null = null;
  private waiters: Waiter[] = [];

  constructor(
    private endpoint: string | null,
    private readonly onRequest: (request: Request) => void
  ) {}

  /** Whether the kernel has an agent to talk to: the plugin has bound its endpoint. */
  get present(): boolean {
    return this.endpoint !== null && existsSync(this.endpoint.replace(/^ipc:\/\//, ''));
  }

  setEndpoint(endpoint: string | null): void {
    this.disconnect();
    this.endpoint = endpoint;
  }

  connect(): void {
    if (this.socket || !this.endpoint) {
      return;
    }
    // Retried every 2 ms (not ZeroMQ's 100) until the plugin listens: the supervisor connects
    // while the engine is still restoring the kernel. No linger: closed with unsent messages, a
    // socket would go on connecting to this endpoint, and a kernel restored there would hand it
    // our routing id (ROUTER_HANDOVER), cutting off the new connection and what was sent on it
    // (seen: a lost "restarted").
    const socket = new zmq.Dealer({ routingId: 'supervisor', linger: 0, reconnectInterval: 2 });
    socket.connect(this.endpoint);
    this.socket = socket;
    this.outbox = new SendQueue<Buffer>(socket, error =>
      log.warn(`agent send failed: ${error.message}`)
    );
    void this.read(socket);
  }

  disconnect(): void {
    const socket = this.socket;
    this.socket = null;
    this.outbox = null;
    socket?.close();
    for (const waiter of this.waiters.splice(0)) {
      // The plugin cannot answer any more: a disconnect is not an answer (not "prepared").
      waiter.reject(new AgentTimeout('the kernel plugin was disconnected before it answered'));
    }
  }

  get connected(): boolean {
    return this.socket !== null;
  }

  /** Sends a command and waits for the report of type `expect`; throws AgentTimeout. */
  async ask(
    command: AgentCommand,
    expect: AgentReport['type'],
    timeoutMs: number
  ): Promise<AgentReport> {
    if (!this.socket) {
      throw new AgentTimeout('the kernel plugin is not connected');
    }
    const reply = new Promise<AgentReport>((resolve, reject) => {
      const waiter: Waiter = { type: expect, resolve, reject };
      this.waiters.push(waiter);
      setTimeout(() => {
        if (this.waiters.includes(waiter)) {
          this.waiters = this.waiters.filter(other => other !== waiter);
          reject(
            new AgentTimeout(
              `the kernel plugin did not answer ${command.type} in ${timeoutMs / 1000} s`
            )
          );
        }
      }, timeoutMs).unref();
    });
    this.send(command);
    return reply;
  }

  /** Sends any JSON object (commands, and answers to the plugin's requests). */
  send(message: object): void {
    void this.outbox?.send(Buffer.from(JSON.stringify(message)));
  }

  private async read(socket: zmq.Dealer): Promise<void> {
    try {
      for await (const [frame] of socket) {
        let report: AgentReport;
        try {
          report = JSON.parse(frame.toString('utf8'));
        } catch {
          log.warn('dropped an unreadable message from the kernel plugin');
          continue;
        }
        if (report.type === 'request' && report.request) {
          this.onRequest(report.request);
          continue;
        }
        const index = this.waiters.findIndex(waiter => waiter.type === report.type);
        if (index >= 0) {
          this.waiters.splice(index, 1)[0].resolve(report);
        }
      }
    } catch (error) {
      if (this.socket === socket) {
        log.debug(`agent reader ended: ${(error as Error).message}`);
      }
    }
  }
}

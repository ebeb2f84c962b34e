// The server end of the kernel_checkpoint comm: clients (the front end, the command line) open
// it on shell; the supervisor answers on iopub, as a kernel's comm would, without the kernel.

import type { SupervisorMessage, SupervisorStatus } from '../../protocol/checkpoint-protocol';
import { PROTOCOL_VERSION } from '../../protocol/checkpoint-protocol-constants';
import { errorMessage, RequestError } from './request-errors';
import type { Relay } from './relay';
import { newMessage, type Header } from './wire';

/** Comms kept open at most: the oldest are forgotten (a client that left never says so). */
export const MAX_COMMS = 64;

export class CommServer {
  private readonly comms = new Map<string, { session: string }>();

  constructor(
    private readonly relay: Relay,
    /** Whether a busy/idle pair around an answer cannot be taken for a running cell's. */
    private readonly quiet: () => boolean,
    private readonly status: () => SupervisorStatus
  ) {}

  has(commId: string): boolean {
    return this.comms.has(commId);
  }

  /** Opens a comm (a client speaking our protocol's major version) and greets it. */
  open(content: Record<string, any>, header: Header): void {
    const commId = content.comm_id as string;
    const version = String(content.data?.protocol_version ?? '');
    this.withStatus(header, () => {
      if (version.split('.')[0] !== PROTOCOL_VERSION.split('.')[0]) {
        this.send(
          commId,
          errorMessage(
            '',
            'status',
            new RequestError(
              'unsupported_protocol',
              `This kernel speaks kernel_checkpoint protocol ${PROTOCOL_VERSION}, the client ${version || 'none'}.`
            )
          ),
          header
        );
        return;
      }
      this.comms.set(commId, { session: header.session });
      while (this.comms.size > MAX_COMMS) {
        this.comms.delete(this.comms.keys().next().value as string);
      }
      this.send(commId, { type: 'hello', status: this.status() }, header);
    });
  }

  close(commId: string): void {
    this.comms.delete(commId);
  }

  /**
   * Wraps the supervisor's answer in busy/idle like a kernel would, so clients can tell when it
   * is done; but only while the kernel is idle, or a client would think a running cell ended.
   * When the answer takes a while (a checkpoint, a restore), idle follows its end: the kernel is
   * frozen or away meanwhile, and JupyterLab's kernel indicator says busy, not idle.
   */
  withStatus(parent: Header, body: () => void | Promise<void>): void {
    const quiet = this.quiet();
    const publish = (execution_state: 'busy' | 'idle') =>
      void this.relay.publish(
        newMessage('status', { execution_state }, { session: this.relay.session, parent })
      );
    if (quiet) {
      publish('busy');
    }
    const answered = body();
    if (quiet) {
      if (answered) {
        void answered.finally(() => publish('idle'));
      } else {
        publish('idle');
      }
    }
  }

  send(commId: string, data: SupervisorMessage, parent: Header | Record<string, never> = {}): void {
    void this.relay.publish(
      newMessage('comm_msg', { comm_id: commId, data }, { session: this.relay.session, parent })
    );
  }

  /** Sends a message to every open comm (events: every timeline updates). */
  broadcast(message: SupervisorMessage): void {
    for (const commId of this.comms.keys()) {
      this.send(commId, message);
    }
  }
}

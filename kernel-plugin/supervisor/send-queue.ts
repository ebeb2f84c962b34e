// One send at a time per socket: a zeromq.js socket allows a single pending send. Used by the
// relay's sockets, the agent channel and the CLI's shell socket.

/** What a queue sends on: a zeromq.js socket, or anything that sends like one. */
export interface QueueSocket<M> {
  send(message: M): Promise<void>;
  readonly closed: boolean;
}

/**
 * Serializes sends on one socket. A send with none pending goes out at once, as almost every
 * send does (the relay's sockets never reach a high-water mark); only sends behind a blocked
 * one wait their turn. A send never rejects: a failure on a socket still open goes to
 * `onFailure` (one on a closed socket is expected: it was closed under the send).
 */
export class SendQueue<M = Buffer[]> {
  private tail: Promise<void> = Promise.resolve();
  private pending = 0;

  constructor(
    private readonly socket: QueueSocket<M>,
    private readonly onFailure: (error: Error) => void
  ) {}

  send(message: M): Promise<void> {
    const sendNow = () => this.socket.send(message);
    let sent: Promise<void>;
    if (this.pending === 0) {
      try {
        sent = sendNow();
      } catch (error) {
        sent = Promise.reject(error);
      }
    } else {
      sent = this.tail.then(sendNow, sendNow);
    }
    this.pending++;
    this.tail = sent;
    return sent.then(
      () => {
        this.pending--;
      },
      error => {
        this.pending--;
        if (!this.socket.closed) {
          this.onFailure(error as Error);
        }
      }
    );
  }
}

// One send at a time per socket, with a fast path: a send with none pending goes out at once.

import { SendQueue } from '../send-queue';

/** A socket whose sends complete when the test says so. */
class ManualSocket {
  closed = false;
  readonly started: string[] = [];
  private readonly finishers: Array<(error?: Error) => void> = [];

  send(message: string): Promise<void> {
    this.started.push(message);
    return new Promise((resolve, reject) =>
      this.finishers.push(error => (error ? reject(error) : resolve()))
    );
  }

  finish(error?: Error): void {
    this.finishers.shift()?.(error);
  }
}

const tick = () => new Promise(resolve => setImmediate(resolve));

describe('send queue', () => {
  it('sends at once when nothing is pending, and in order behind a pending send', async () => {
    const socket = new ManualSocket();
    const queue = new SendQueue<string>(socket, () => undefined);
    const first = queue.send('a');
    expect(socket.started).toEqual(['a']); // synchronously: no turn of the event loop
    const second = queue.send('b');
    await tick();
    expect(socket.started).toEqual(['a']);
    socket.finish();
    await first;
    await tick();
    expect(socket.started).toEqual(['a', 'b']);
    socket.finish();
    await second;
    void queue.send('c');
    expect(socket.started).toEqual(['a', 'b', 'c']);
  });

  it('reports a failure on an open socket, never rejects, and goes on', async () => {
    const socket = new ManualSocket();
    const failures: string[] = [];
    const queue = new SendQueue<string>(socket, error => failures.push(error.message));
    const first = queue.send('a');
    const second = queue.send('b');
    socket.finish(new Error('full'));
    await expect(first).resolves.toBeUndefined();
    await tick();
    socket.finish();
    await second;
    expect(failures).toEqual(['full']);
    expect(socket.started).toEqual(['a', 'b']);
  });

  it('says nothing of a send that failed because the socket was closed under it', async () => {
    const socket = new ManualSocket();
    const failures: string[] = [];
    const queue = new SendQueue<string>(socket, error => failures.push(error.message));
    const sent = queue.send('a');
    socket.closed = true;
    socket.finish(new Error('closed'));
    await sent;
    expect(failures).toEqual([]);
  });
});

// The page server under a reader slower than its writes (criu lazy-pages busy copying pages into
// the kernel): a real TCP connection, a page source of known bytes.

import net from 'node:net';

import { PAGE_BYTES } from '../criu-pagemap';
import { PageServer, type PageSource } from '../page-server';
import { daemonRequest, IOV_BYTES, PS_IOV_CLOSE, PS_IOV_GET } from './page-server-wire';

/** Each page holds its own address's page number in its first bytes. */
const source: PageSource = {
  read: async (_pid, vaddr, count) => {
    const bytes = Buffer.alloc(count * PAGE_BYTES);
    for (let page = 0; page < count; page++) {
      bytes.writeUInt32LE(vaddr / PAGE_BYTES + page, page * PAGE_BYTES);
    }
    return bytes;
  }
};

it('answers a reader that keeps it waiting without piling up listeners (no leak warning in the log)', async () => {
  const server = await PageServer.listen(source);
  // This process is the daemon here: its client's socket is among its fds.
  server.trust(process.pid);
  const socket = net.connect(server.port, '127.0.0.1');
  try {
    await run(server, socket);
  } finally {
    socket.destroy();
    server.end();
  }
});

async function run(server: PageServer, socket: net.Socket): Promise<void> {
  await new Promise(resolve => socket.once('connect', resolve));
  // 24 requests of 4 MiB each, read only once all are sent: every answer waits for a drain.
  const pages = 1024;
  const requests = 24;
  socket.pause();
  for (let i = 0; i < requests; i++) {
    socket.write(daemonRequest(PS_IOV_GET, pages, i * pages * PAGE_BYTES, 1));
  }
  await new Promise(resolve => setTimeout(resolve, 300));
  const expected = requests * (IOV_BYTES + pages * PAGE_BYTES);
  const chunks: Buffer[] = [];
  let received = 0;
  await new Promise<void>(resolve => {
    socket.on('data', (data: Buffer) => {
      chunks.push(data);
      received += data.length;
      if (received >= expected) {
        resolve();
      }
    });
    socket.resume();
  });
  const all = Buffer.concat(chunks);
  for (let i = 0; i < requests; i++) {
    const at = i * (IOV_BYTES + pages * PAGE_BYTES);
    expect(Number(all.readBigUInt64LE(at + 16))).toBe(i * pages * PAGE_BYTES);
    expect(all.readUInt32LE(at + IOV_BYTES + (pages - 1) * PAGE_BYTES)).toBe((i + 1) * pages - 1);
  }
  // What Node's MaxListenersExceededWarning counts (printed into the Jupyter server's log once
  // it passes 10): the served socket's listeners, one for the server's own end at most.
  const served = (server as unknown as { socket: net.Socket }).socket;
  expect(served.listenerCount('close')).toBeLessThanOrEqual(1);
  expect(served.listenerCount('drain')).toBe(0);
  socket.write(daemonRequest(PS_IOV_CLOSE, 0, 0, 0));
  const end = await server.ended;
  expect(end).toMatchObject({ closed: true, requests, pages: requests * pages });
}

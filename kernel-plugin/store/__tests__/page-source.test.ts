// A chunk image's pages served to `criu lazy-pages --page-server` over the page server protocol:
// a real chunk store, a real TCP connection, requests mapped through a pagemap to the chunks.

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';

import { PAGE_BYTES, PE_LAZY, PE_PRESENT, parsePagemap } from '../../engines/criu-pagemap';
import { PageServer } from '../../engines/page-server';
import { mmImage, pagemapImage } from '../../engines/__tests__/pagemap-image';
import { daemonRequest, PS_IOV_CLOSE, PS_IOV_GET } from '../../engines/__tests__/page-server-wire';
import { ChunkCorruptError, ChunkStore, type ChunkList } from '../chunks';
import { ChunkPageSource } from '../page-source';

const BASE = 0x7f0000000000;

let dir: string;
let store: ChunkStore;
let pages: Buffer;
let lists: Record<string, ChunkList>;
let rebuilt: string;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kc-pages-'));
  store = new ChunkStore(path.join(dir, 'chunks'));
  // Pid 7: 2 eager pages (say, a file's private mapping), then 7 + 1 lazy ones.
  pages = randomBytes(10 * PAGE_BYTES);
  const pagemap = pagemapImage(3, [
    { vaddr: 0x400000, pages: 2, flags: PE_PRESENT },
    { vaddr: BASE, pages: 7, flags: PE_PRESENT | PE_LAZY },
    { vaddr: BASE + 32 * PAGE_BYTES, pages: 1, flags: PE_PRESENT | PE_LAZY }
  ]);
  const image = path.join(dir, 'image');
  await fs.mkdir(image);
  await fs.writeFile(path.join(image, 'pages-3.img'), pages);
  await fs.writeFile(path.join(image, 'pagemap-7.img'), pagemap);
  const session = await store.begin({ durable: false });
  lists = {
    'pages-3.img': await session.ingest(path.join(image, 'pages-3.img')),
    'pagemap-7.img': await session.ingest(path.join(image, 'pagemap-7.img'))
  };
  await session.finish();
  await session.close();
  // What openImage leaves for the source: every file but the pages'.
  rebuilt = path.join(dir, 'rebuilt');
  await fs.mkdir(rebuilt);
  await fs.writeFile(path.join(rebuilt, 'pagemap-7.img'), pagemap);
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const damaged = async (error: ChunkCorruptError) => new Error(`damaged: ${error.message}`);

/** A client that reads exactly `bytes` more, or what arrived when the connection ended. */
async function connect(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise(resolve => socket.once('connect', resolve));
  let received = Buffer.alloc(0);
  let ended = false;
  const waiters: Array<() => void> = [];
  socket.on('data', data => {
    received = Buffer.concat([received, data]);
    waiters.splice(0).forEach(wake => wake());
  });
  socket.on('close', () => {
    ended = true;
    waiters.splice(0).forEach(wake => wake());
  });
  return {
    socket,
    async read(bytes: number, timeoutMs = 2000): Promise<Buffer> {
      const deadline = Date.now() + timeoutMs;
      while (received.length < bytes && !ended && Date.now() < deadline) {
        await new Promise<void>(resolve => {
          waiters.push(resolve);
          setTimeout(resolve, 50);
        });
      }
      const out = received.subarray(0, Math.min(bytes, received.length));
      received = received.subarray(out.length);
      return out;
    }
  };
}

/** Flips a byte of page `page` (lazy) of the pages file in its pack. */
async function flipPage(page: number): Promise<void> {
  const list = lists['pages-3.img'];
  let first = 0;
  const run = list.runs.find(candidate => {
    const holds = first <= page && page < first + candidate.count;
    first += candidate.count;
    return holds;
  });
  expect(run?.zstd).toBeUndefined();
  const start = list.runs.slice(0, list.runs.indexOf(run!)).reduce((n, r) => n + r.count, 0);
  const pack = await fs.open(store.packPath(run!.pack), 'r+');
  const at = run!.at + (page - start) * PAGE_BYTES + 17;
  const byte = Buffer.alloc(1);
  await pack.read(byte, 0, 1, at);
  await pack.write(Buffer.from([byte[0] ^ 0xff]), 0, 1, at);
  await pack.close();
}

/**
 * Flips a byte of page `page` and gives its pack back its mtime: a change the file system's
 * identity (size, inode, mtime) does not show, so only reading the chunk finds it.
 */
async function flipPageUnseen(page: number): Promise<void> {
  const run = lists['pages-3.img'].runs[0];
  const file = store.packPath(run.pack);
  const before = await fs.stat(file);
  await flipPage(page);
  await fs.utimes(file, before.atime, before.mtime);
}

describe('what a chunk image is checked for when it is opened', () => {
  it('a pack unchanged since it was written is not read at open: its chunks are checked as they are sent', async () => {
    expect(lists['pages-3.img'].runs).toHaveLength(1);
    await flipPageUnseen(7);
    // Opened without reading the pack...
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged);
    // ...and the damaged chunk is still never sent.
    await expect(source.read(7, BASE + 5 * PAGE_BYTES, 1)).rejects.toThrow(
      /^damaged: Chunk [0-9a-f]+ .* is damaged/
    );
    expect(
      (await source.read(7, BASE, 1)).equals(pages.subarray(2 * PAGE_BYTES, 3 * PAGE_BYTES))
    ).toBe(true);
    await source.release();
  });

  it('an eager page damaged in a pack unchanged since written is found before criu restore reads it', async () => {
    // Page 0 is eager (not PE_LAZY): written into the sparse pages file while the running
    // kernel stops, each chunk checked first.
    await flipPageUnseen(0);
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged);
    await expect(source.ready()).rejects.toThrow(/^damaged: Chunk [0-9a-f]+ .* is damaged/);
    // A restore that turns out full cannot write it out either.
    await expect(source.fillIn()).rejects.toThrow(/^damaged: Chunk [0-9a-f]+ .* is damaged/);
    await source.release();
  });

  it('KERNEL_CHECKPOINT_VERIFY=always reads every chunk at open, unchanged packs too', async () => {
    await flipPageUnseen(7);
    await expect(
      ChunkPageSource.open(rebuilt, lists, store, damaged, { rehash: true })
    ).rejects.toThrow(/^damaged: Chunk [0-9a-f]+ .* is damaged/);
  });

  it('a pack with no record of its identity (a store from before) is read at open', async () => {
    await flipPageUnseen(7);
    await fs.rm(path.join(dir, 'chunks', 'sealed', lists['pages-3.img'].runs[0].pack));
    await expect(ChunkPageSource.open(rebuilt, lists, store, damaged)).rejects.toThrow(
      /^damaged: Chunk [0-9a-f]+ .* is damaged/
    );
  });

  it('a missing pack refuses the image at open', async () => {
    await fs.rm(store.packPath(lists['pages-3.img'].runs[0].pack));
    await expect(ChunkPageSource.open(rebuilt, lists, store, damaged)).rejects.toThrow(
      /^damaged: Chunk [0-9a-f]+ .* is damaged: its pack is missing/
    );
  });
});

describe('what a served chunk image restores eagerly', () => {
  /** The image again with an mm image: a small VMA over the first lazy entry, a big one after. */
  async function withVmas(extra: Record<string, Buffer> = {}): Promise<void> {
    const image = path.join(dir, 'image');
    const mm = mmImage([
      { start: 0x400000, end: 0x400000 + 2 * PAGE_BYTES },
      { start: BASE, end: BASE + 8 * PAGE_BYTES },
      { start: BASE + 32 * PAGE_BYTES, end: BASE + 32 * PAGE_BYTES + 32 * 2 ** 20 }
    ]);
    await fs.writeFile(path.join(image, 'mm-7.img'), mm);
    await fs.writeFile(path.join(rebuilt, 'mm-7.img'), mm);
    const session = await store.begin({ durable: false });
    lists['mm-7.img'] = await session.ingest(path.join(image, 'mm-7.img'));
    for (const [name, bytes] of Object.entries(extra)) {
      await fs.writeFile(path.join(image, name), bytes);
      lists[name] = await session.ingest(path.join(image, name));
    }
    await session.finish();
    await session.close();
  }

  it("writes a small VMA's lazy pages and makes them eager in the folder's pagemap; a big one's are served", async () => {
    await withVmas();
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged, {
      prefetch: { hint: null }
    });
    await source.ready();
    const file = await fs.readFile(path.join(rebuilt, 'pages-3.img'));
    expect(file.subarray(0, 9 * PAGE_BYTES).equals(pages.subarray(0, 9 * PAGE_BYTES))).toBe(true);
    expect(file.subarray(9 * PAGE_BYTES).equals(Buffer.alloc(PAGE_BYTES))).toBe(true);
    const map = parsePagemap(await fs.readFile(path.join(rebuilt, 'pagemap-7.img')));
    expect(map.entries.map(entry => [entry.vaddr, entry.pages, entry.flags & PE_LAZY])).toEqual([
      [0x400000, 2, 0],
      [BASE, 7, 0],
      [BASE + 32 * PAGE_BYTES, 1, PE_LAZY]
    ]);
    expect(
      (await source.read(7, BASE + 32 * PAGE_BYTES, 1)).equals(pages.subarray(9 * PAGE_BYTES))
    ).toBe(true);
    await source.release();
  });

  it("adds the hint's pages; with prefetch off nothing more is eager", async () => {
    await withVmas();
    const hinted = await ChunkPageSource.open(rebuilt, lists, store, damaged, {
      prefetch: { hint: new Map([[7, [BASE + 32 * PAGE_BYTES]]]) }
    });
    await hinted.ready();
    const file = await fs.readFile(path.join(rebuilt, 'pages-3.img'));
    expect(file.equals(pages)).toBe(true);
    await hinted.release();
    await fs.writeFile(
      path.join(rebuilt, 'pagemap-7.img'),
      await fs.readFile(path.join(dir, 'image', 'pagemap-7.img'))
    );
    const off = await ChunkPageSource.open(rebuilt, lists, store, damaged, { prefetch: null });
    await off.ready();
    const sparse = await fs.readFile(path.join(rebuilt, 'pages-3.img'));
    expect(sparse.subarray(2 * PAGE_BYTES).equals(Buffer.alloc(8 * PAGE_BYTES))).toBe(true);
    await off.release();
  });

  it('writes whole a pages file no process pagemap names (shared memory), rather than serve it', async () => {
    const shmem = randomBytes(4 * PAGE_BYTES);
    await withVmas({ 'pages-9.img': shmem });
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged, {
      prefetch: { hint: null }
    });
    expect((await fs.readFile(path.join(rebuilt, 'pages-9.img'))).equals(shmem)).toBe(true);
    expect(source.bytes).toBe(pages.length);
    await source.release();
  });
});

describe('a chunk image served page by page', () => {
  it('writes only the eager pages into a sparse pages file; the rest come by request', async () => {
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged);
    await source.ready();
    const file = await fs.readFile(path.join(rebuilt, 'pages-3.img'));
    expect(file.length).toBe(pages.length);
    expect(file.subarray(0, 2 * PAGE_BYTES).equals(pages.subarray(0, 2 * PAGE_BYTES))).toBe(true);
    expect(file.subarray(2 * PAGE_BYTES).equals(Buffer.alloc(8 * PAGE_BYTES))).toBe(true);
    expect(source.bytes).toBe(pages.length);

    const server = await PageServer.listen(source);
    // This process is the daemon here: its client's socket is among its fds.
    server.trust(process.pid);
    const client = await connect(server.port);
    // Inside the first lazy entry, then one spanning into the next entry of the file.
    client.socket.write(daemonRequest(PS_IOV_GET, 2, BASE + PAGE_BYTES, 7));
    client.socket.write(daemonRequest(PS_IOV_GET, 1, BASE + 32 * PAGE_BYTES, 7));
    const first = await client.read(32 + 2 * PAGE_BYTES);
    expect(first.readUInt32LE(0)).toBe((4 << 16) | 6);
    expect(first.readBigUInt64LE(8)).toBe(2n);
    expect(Number(first.readBigUInt64LE(16))).toBe(BASE + PAGE_BYTES);
    expect(first.subarray(32).equals(pages.subarray(3 * PAGE_BYTES, 5 * PAGE_BYTES))).toBe(true);
    const second = await client.read(32 + PAGE_BYTES);
    expect(second.subarray(32).equals(pages.subarray(9 * PAGE_BYTES))).toBe(true);
    client.socket.write(daemonRequest(PS_IOV_CLOSE, 0, 0, 0));
    expect((await client.read(4)).readUInt32LE(0)).toBe(0);
    const end = await server.ended;
    expect(end).toMatchObject({ closed: true, requests: 2, pages: 3 });
    expect(end.error).toBeUndefined();
    await source.release();
  });

  it('a damaged chunk is never sent: no reply, and the failure names the damage', async () => {
    // Damaged after the image was opened (and checked whole).
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged);
    await flipPage(5);

    const server = await PageServer.listen(source);
    // This process is the daemon here: its client's socket is among its fds.
    server.trust(process.pid);
    const failures: Error[] = [];
    server.onFailure = error => failures.push(error);
    const client = await connect(server.port);
    client.socket.write(daemonRequest(PS_IOV_GET, 3, BASE + 2 * PAGE_BYTES, 7));
    // A request after it is not answered either.
    client.socket.write(daemonRequest(PS_IOV_GET, 1, BASE, 7));
    expect((await client.read(32, 500)).length).toBe(0);
    expect(failures).toHaveLength(1);
    expect(failures[0].message).toMatch(/^damaged: Chunk [0-9a-f]+ .* is damaged/);
    expect(server.failure).toBe(failures[0]);
    server.end();
    expect((await server.ended).requests).toBe(0);
    await source.release();
  });

  it('a damaged chunk found when the image is opened refuses it, naming the damage', async () => {
    await flipPage(7);
    await expect(ChunkPageSource.open(rebuilt, lists, store, damaged)).rejects.toThrow(
      /^damaged: Chunk [0-9a-f]+ .* is damaged/
    );
  });

  it('refuses a second connection and a request for a pid the image has not', async () => {
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged);
    const server = await PageServer.listen(source);
    // This process is the daemon here: its client's socket is among its fds.
    server.trust(process.pid);
    const failures: Error[] = [];
    server.onFailure = error => failures.push(error);
    const client = await connect(server.port);
    const stranger = net.connect(server.port, '127.0.0.1');
    const refused = await new Promise(resolve => {
      stranger.once('error', () => resolve(true));
      stranger.once('close', () => resolve(true));
    });
    expect(refused).toBe(true);
    client.socket.write(daemonRequest(PS_IOV_GET, 1, BASE, 8));
    expect((await client.read(32, 500)).length).toBe(0);
    expect(failures[0].message).toMatch(/no pagemap for pid 8/);
    server.end();
    await source.release();
  });

  it('writes the pages files whole for a restore that is not lazy after all', async () => {
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged);
    await source.fillIn();
    expect((await fs.readFile(path.join(rebuilt, 'pages-3.img'))).equals(pages)).toBe(true);
    await source.release();
  });
});

describe('the page server serves only the daemon', () => {
  /** Another process that connects, asks for a page and prints how many bytes it got back. */
  function intruder(port: number) {
    const script = `
      const s = require('net').connect(${port}, '127.0.0.1', () => {
        process.stdout.write('connected\\n');
        const iov = Buffer.alloc(32);
        iov.writeUInt32LE(${PS_IOV_GET}, 0); iov.writeBigUInt64LE(1n, 8);
        iov.writeBigUInt64LE(${BASE}n, 16); iov.writeBigUInt64LE(7n, 24);
        s.write(iov);
      });
      let got = 0;
      s.on('data', d => { got += d.length; });
      s.on('error', () => {});
      s.on('close', () => process.stdout.write('got ' + got + '\\n'));
      setTimeout(() => s.destroy(), 5000);`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let exited = false;
    child.stdout.on('data', data => (out += data));
    child.once('close', () => (exited = true));
    // Polls until the text comes or the process has ended (a refused connect never says
    // `connected`: a poll that went on would keep jest from exiting).
    const when = (text: string) =>
      new Promise<string>(resolve => {
        const look = () => (out.includes(text) || exited ? resolve(out) : setTimeout(look, 20));
        look();
      });
    return { connected: when('connected'), done: when('got ') };
  }

  it('a connection from another process, made first, is closed unread; the daemon is served', async () => {
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged);
    const server = await PageServer.listen(source);
    const other = intruder(server.port);
    await other.connected;
    // The daemon (this process here) connects after it, and only then is its pid known.
    const client = await connect(server.port);
    server.trust(process.pid);
    expect(await other.done).toMatch(/got 0\n/);
    client.socket.write(daemonRequest(PS_IOV_GET, 1, BASE, 7));
    const reply = await client.read(32 + PAGE_BYTES);
    expect(reply.subarray(32).equals(pages.subarray(2 * PAGE_BYTES, 3 * PAGE_BYTES))).toBe(true);
    // Still one connection: a process connecting now is refused too.
    expect(await intruder(server.port).done).toMatch(/got 0\n/);
    client.socket.write(daemonRequest(PS_IOV_CLOSE, 0, 0, 0));
    expect((await client.read(4)).readUInt32LE(0)).toBe(0);
    expect(await server.ended).toMatchObject({ closed: true, requests: 1, pages: 1 });
    await source.release();
  });

  it('with no daemon (the restore went on in full), nothing is served', async () => {
    const source = await ChunkPageSource.open(rebuilt, lists, store, damaged);
    const server = await PageServer.listen(source);
    const other = intruder(server.port);
    await other.connected;
    server.end();
    expect(await other.done).toMatch(/got 0\n/);
    expect((await server.ended).requests).toBe(0);
    await source.release();
  });
});

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { buildSync } from 'esbuild';

import { zstdCodec } from '../zstd';
import {
  CHUNK_BYTES,
  ChunkCorruptError,
  chunkRefs,
  ChunkStore,
  decodeChunkLists,
  encodeChunkLists,
  FRAME_CHUNKS,
  LONG_RUN_CHUNKS,
  planReads,
  type ChunkList
} from '../chunks';
import { HashWorkers } from '../hash-workers';
import { runNode } from './kill-child';

let dir: string;
let store: ChunkStore;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kc-chunks-'));
  store = new ChunkStore(path.join(dir, 'chunks'));
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function writeFile(name: string, content: Buffer): Promise<string> {
  const file = path.join(dir, name);
  await fs.writeFile(file, content);
  return file;
}

/** Ingests files in one session, finished and closed (as a committed image would be). */
async function ingestAll(target: ChunkStore, files: string[]): Promise<ChunkList[]> {
  const session = await target.begin({ durable: false });
  const lists = [];
  for (const file of files) {
    lists.push(await session.ingest(file));
  }
  await session.finish();
  await session.close();
  return lists;
}

async function materialized(list: ChunkList, target = store): Promise<Buffer> {
  const out = path.join(dir, `out-${randomBytes(4).toString('hex')}`);
  await target.materialize(list, out);
  const bytes = await fs.readFile(out);
  await fs.rm(out);
  return bytes;
}

async function packFiles(): Promise<string[]> {
  return (await fs.readdir(path.join(store.root, 'packs'))).sort();
}

/** A memory-like image: pages of random bytes, some of them repeated. */
function image(pages: number, seedPages: Buffer[] = []): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < pages; i++) {
    parts.push(seedPages[i] ?? randomBytes(CHUNK_BYTES));
  }
  return Buffer.concat(parts);
}

function pagesOf(content: Buffer): Buffer[] {
  const pages = [];
  for (let at = 0; at < content.length; at += CHUNK_BYTES) {
    pages.push(content.subarray(at, at + CHUNK_BYTES));
  }
  return pages;
}

describe('ingest and materialize', () => {
  it('gives back every file byte for byte, whatever its size', async () => {
    const sizes = [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, (3 << 20) + 123, 9 << 20];
    const contents = sizes.map(size => randomBytes(size));
    const files = await Promise.all(contents.map((c, i) => writeFile(`f${i}`, c)));
    const lists = await ingestAll(store, files);
    for (let i = 0; i < sizes.length; i++) {
      expect(lists[i].bytes).toBe(sizes[i]);
      expect((await materialized(lists[i])).equals(contents[i])).toBe(true);
    }
  });

  it('stores a chunk once: a second image stores only its new pages', async () => {
    const first = image(512);
    const second = Buffer.from(first);
    // Three pages change; one page appears twice in the second image.
    randomBytes(CHUNK_BYTES).copy(second, 10 * CHUNK_BYTES);
    randomBytes(CHUNK_BYTES).copy(second, 300 * CHUNK_BYTES);
    second.copy(second, 400 * CHUNK_BYTES, 300 * CHUNK_BYTES, 301 * CHUNK_BYTES);
    const [a] = await ingestAll(store, [await writeFile('a', first)]);
    const [b] = await ingestAll(store, [await writeFile('b', second)]);
    expect((await materialized(b)).equals(second)).toBe(true);
    const usage = await store.usage({ a: [a], b: [b] });
    expect(usage.images.b.exclusiveBytes).toBe(2 * CHUNK_BYTES);
    expect(usage.images.a.exclusiveBytes).toBe(3 * CHUNK_BYTES);
    expect(usage.images.b.bytes).toBe(second.length);
    // Packs hold each distinct page once, plus a small index.
    expect(usage.totalBytes).toBeLessThan(514 * CHUNK_BYTES + 64 * 1024);
    expect(usage.totalBytes).toBeGreaterThanOrEqual(514 * CHUNK_BYTES);
    expect(usage.garbageBytes).toBe(0);
    // Each image's own pack is used by it alone.
    expect(usage.images.b.freedBytes).toBeGreaterThan(2 * CHUNK_BYTES);
    expect(usage.images.b.freedBytes).toBeLessThan(3 * CHUNK_BYTES);
  });

  it('shares chunks with what another store object wrote (another supervisor)', async () => {
    const content = image(64);
    await ingestAll(store, [await writeFile('a', content)]);
    const other = new ChunkStore(store.root);
    const before = await packFiles();
    const [again] = await ingestAll(other, [await writeFile('b', content)]);
    expect(await packFiles()).toEqual(before);
    expect((await materialized(again, other)).equals(content)).toBe(true);
  });

  it('gives way between blocks when asked (background ingest)', async () => {
    const content = randomBytes((9 << 20) + 5);
    const session = await store.begin({ durable: false });
    let pauses = 0;
    const list = await session.ingest(await writeFile('a', content), async () => {
      pauses++;
      await new Promise(resolve => setTimeout(resolve, 5));
    });
    await session.finish();
    await session.close();
    // Three blocks of 4 MiB: a pause after each of the first two.
    expect(pauses).toBe(2);
    expect((await materialized(list)).equals(content)).toBe(true);
  });

  it('writes a chunk again when another store object collected its pack', async () => {
    const content = image(16);
    await ingestAll(store, [await writeFile('a', content)]);
    await new ChunkStore(store.root).gc(async () => []);
    expect(await packFiles()).toEqual([]);
    const [again] = await ingestAll(store, [await writeFile('b', content)]);
    expect(await packFiles()).toHaveLength(1);
    expect((await materialized(again)).equals(content)).toBe(true);
  });

  it('keeps packs and folders private (0600, 0700)', async () => {
    await ingestAll(store, [await writeFile('a', randomBytes(10000))]);
    for (const sub of ['', 'packs', 'writers', 'doomed']) {
      expect((await fs.stat(path.join(store.root, sub))).mode & 0o777).toBe(0o700);
    }
    for (const name of await packFiles()) {
      expect((await fs.stat(path.join(store.root, 'packs', name))).mode & 0o777).toBe(0o600);
    }
  });

  it('writes chunk lists to one file and reads them back', async () => {
    const lists = await ingestAll(store, [
      await writeFile('a', randomBytes(50000)),
      await writeFile('b', Buffer.alloc(0)),
      await writeFile('c', randomBytes(CHUNK_BYTES * 3))
    ]);
    const decoded = decodeChunkLists(encodeChunkLists({ a: lists[0], b: lists[1], c: lists[2] }));
    expect(decoded.a).toEqual(lists[0]);
    expect(decoded.b.bytes).toBe(0);
    expect([...chunkRefs(decoded.c)].map(ref => ref.offset)).toEqual([0, 4096, 8192]);
    expect(() => decodeChunkLists(encodeChunkLists({ a: lists[0] }).subarray(0, 100))).toThrow(
      /truncated/
    );
  });
});

/** Pages that compress (like most of a real kernel's memory): short random words, repeated. */
function compressiblePages(pages: number): Buffer {
  const words = Array.from({ length: 64 }, () => randomBytes(6).toString('hex'));
  let text = '';
  while (text.length < pages * CHUNK_BYTES) {
    text += words[Math.floor(Math.random() * words.length)] + ' ';
  }
  return Buffer.from(text.slice(0, pages * CHUNK_BYTES));
}

describe('compression (zstd frames)', () => {
  let zstore: ChunkStore;

  beforeEach(() => {
    zstore = new ChunkStore(path.join(dir, 'zchunks'), zstdCodec());
  });

  it('stores compressible pages in fewer bytes and gives them back', async () => {
    const content = Buffer.concat([
      compressiblePages(100),
      randomBytes(40 * CHUNK_BYTES),
      Buffer.from('tail')
    ]);
    const [list] = await ingestAll(zstore, [await writeFile('a', content)]);
    expect((await materialized(list, zstore)).equals(content)).toBe(true);
    const refs = [...chunkRefs(list)];
    expect(refs.slice(0, 100).every(ref => ref.compressed)).toBe(true);
    // Frames of random pages do not compress: they are stored raw (pages 96-111 are one frame,
    // compressed for its first four).
    expect(refs.slice(112, 140).some(ref => ref.compressed)).toBe(false);
    const usage = await zstore.usage({ a: [list] });
    expect(usage.totalBytes).toBeLessThan(60 * CHUNK_BYTES);
  });

  it('shares single chunks of a frame with later images', async () => {
    const first = compressiblePages(64);
    const second = Buffer.from(first);
    compressiblePages(1).copy(second, 20 * CHUNK_BYTES);
    const [a] = await ingestAll(zstore, [await writeFile('a', first)]);
    const before = (await zstore.usage({ a: [a] })).totalBytes;
    const [b] = await ingestAll(zstore, [await writeFile('b', second)]);
    expect((await materialized(b, zstore)).equals(second)).toBe(true);
    // One new page, compressed: far less than a frame of 16.
    const after = (await zstore.usage({ a: [a], b: [b] })).totalBytes;
    expect(after - before).toBeLessThan(2 * CHUNK_BYTES);
    // b's runs cut a's frame around the new page: slots 0-3, then 5-15 of its second frame.
    expect(b.runs.map(run => [run.slot, run.count])).toEqual([
      [0, 16],
      [0, 4],
      [0, 1],
      [5, 11],
      [0, 16],
      [0, 16]
    ]);
  });

  it('keeps the chunks it is told to raw, in frames of their own, and compresses the others', async () => {
    // A lazy restore copies a CRIU image's eager pages before the kernel runs: raw, they are
    // read, not decompressed. Pages 10-29 of 60 compressible ones.
    const content = compressiblePages(60);
    const session = await zstore.begin({ durable: false });
    const list = await session.ingest(await writeFile('a', content), undefined, [
      { first: 10, count: 20 }
    ]);
    await session.finish();
    await session.close();
    expect((await materialized(list, zstore)).equals(content)).toBe(true);
    const compressed = [...chunkRefs(list)].map(ref => ref.compressed);
    expect(compressed.slice(0, 10).every(Boolean)).toBe(true);
    expect(compressed.slice(10, 30).some(Boolean)).toBe(false);
    expect(compressed.slice(30).every(Boolean)).toBe(true);
    // And a later image sharing them reads them raw too.
    const [again] = await ingestAll(zstore, [await writeFile('b', content)]);
    expect([...chunkRefs(again)].map(ref => ref.compressed)).toEqual(compressed);
  });

  it('a flipped byte in a frame is an error naming a chunk of it', async () => {
    const content = compressiblePages(32);
    const [list] = await ingestAll(zstore, [await writeFile('a', content)]);
    const ref = [...chunkRefs(list)][20];
    const packFile = path.join(zstore.root, 'packs', `${ref.pack}.pack`);
    const bytes = await fs.readFile(packFile);
    bytes[ref.at + Math.floor(ref.stored / 2)] ^= 0x10;
    await fs.writeFile(packFile, bytes);
    const failure = await zstore.materialize(list, path.join(dir, 'x')).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ChunkCorruptError);
    expect((failure as ChunkCorruptError).pack).toBe(ref.pack);
    expect((failure as ChunkCorruptError).fileOffset).toBeGreaterThanOrEqual(16 * CHUNK_BYTES);
    // The first frame is intact.
    const firstFrame = { ...list, bytes: 16 * CHUNK_BYTES, runs: list.runs.slice(0, 1) };
    expect(
      (await materialized(firstFrame, zstore)).equals(content.subarray(0, 16 * CHUNK_BYTES))
    ).toBe(true);
  });

  it('a store without a codec says why it cannot read compressed chunks', async () => {
    const [list] = await ingestAll(zstore, [await writeFile('a', compressiblePages(4))]);
    const plain = new ChunkStore(zstore.root);
    await expect(plain.materialize(list, path.join(dir, 'x'))).rejects.toThrow(/has no codec/);
  });

  it('refuses a zstd level out of range', () => {
    expect(() => zstdCodec(0)).toThrow(/from 1 to 19/);
    expect(() => zstdCodec(2.5)).toThrow(/from 1 to 19/);
  });
});

describe('rebuilding after many checkpoints', () => {
  /**
   * A series like a kernel's: a first image, then images each with a few pages changed from the
   * one before (raw and compressible pages), every one ingested on its own.
   */
  async function series(target: ChunkStore, pages: number, edits: number) {
    let content = Buffer.concat([image(pages), compressiblePages(64), Buffer.from('tail')]);
    const contents = [content];
    const lists = [(await ingestAll(target, [await writeFile('s0', content)]))[0]];
    for (let edit = 1; edit <= edits; edit++) {
      content = Buffer.from(content);
      for (let k = 0; k < 40; k++) {
        const page = Math.floor(Math.random() * (pages + 64));
        (k % 4 === 0 ? compressiblePages(1) : randomBytes(CHUNK_BYTES)).copy(
          content,
          page * CHUNK_BYTES
        );
      }
      contents.push(content);
      lists.push((await ingestAll(target, [await writeFile(`s${edit}`, content)]))[0]);
    }
    return { contents, lists };
  }

  it('gives back the newest and the oldest image byte for byte, raw and compressed', async () => {
    for (const target of [store, new ChunkStore(path.join(dir, 'z'), zstdCodec())]) {
      // 1100 pages: one run of the first image is longer than a read segment (4 MiB).
      const { contents, lists } = await series(target, 1100, 6);
      expect(lists[6].runs.length).toBeGreaterThan(200);
      for (const i of [6, 3, 0]) {
        expect((await materialized(lists[i], target)).equals(contents[i])).toBe(true);
      }
    }
  });

  it('reads each pack in a few large reads, not once per run', async () => {
    const { lists } = await series(store, 2000, 8);
    const newest = lists[8];
    const packs = new Set(newest.runs.map(run => run.pack)).size;
    const { segments, pieces } = planReads(newest);
    expect(newest.runs.length).toBeGreaterThan(500);
    expect(pieces.length).toBeGreaterThanOrEqual(newest.runs.length);
    // Every pack here is smaller than a segment (4 MiB) but the first (8 MiB).
    expect(segments.length).toBeLessThanOrEqual(packs + 2);
  });

  it('reads any range of chunks, each checked against its hash (for a page server)', async () => {
    const { contents, lists } = await series(new ChunkStore(store.root, zstdCodec()), 600, 4);
    const reader = await new ChunkStore(store.root, zstdCodec()).reader(lists[4]);
    try {
      const content = contents[4];
      expect(reader.chunks).toBe(Math.ceil(content.length / CHUNK_BYTES));
      for (const [first, count] of [
        [0, reader.chunks],
        [0, 1],
        [5, 37],
        [599, 66],
        [reader.chunks - 1, 1],
        [10, 0]
      ]) {
        const expected = content.subarray(first * CHUNK_BYTES, (first + count) * CHUNK_BYTES);
        expect((await reader.read(first, count)).equals(expected)).toBe(true);
      }
      const into = Buffer.alloc(8 * CHUNK_BYTES);
      await reader.read(100, 8, into);
      expect(into.equals(content.subarray(100 * CHUNK_BYTES, 108 * CHUNK_BYTES))).toBe(true);
      await expect(reader.read(reader.chunks, 1)).rejects.toThrow(RangeError);
      await expect(reader.read(-1, 2)).rejects.toThrow(RangeError);
    } finally {
      await reader.close();
    }
  });

  it('reads raw chunks on this thread once their packs are open; compressed ones it leaves to read', async () => {
    const { contents, lists } = await series(new ChunkStore(store.root, zstdCodec()), 600, 4);
    const reader = await new ChunkStore(store.root, zstdCodec()).reader(lists[4]);
    try {
      const into = Buffer.alloc(contents[4].length);
      // Not before its packs are open.
      expect(reader.readSync(0, 1, into)).toBe(false);
      await reader.openPacks();
      let first = 0;
      let raw = 0;
      for (const run of lists[4].runs) {
        const read = reader.readSync(first, run.count, into);
        expect(read).toBe(run.zstd === undefined);
        if (read) {
          raw++;
          const expected = contents[4].subarray(
            first * CHUNK_BYTES,
            (first + run.count) * CHUNK_BYTES
          );
          expect(into.subarray(0, expected.length).equals(expected)).toBe(true);
        }
        first += run.count;
      }
      expect(raw).toBeGreaterThan(0);
      expect(() => reader.readSync(reader.chunks, 1, into)).toThrow(RangeError);
    } finally {
      await reader.close();
    }
  });

  it('reads many short ranges with each zstd frame decompressed once, every chunk checked', async () => {
    const { contents, lists } = await series(new ChunkStore(store.root, zstdCodec()), 600, 4);
    const codec = zstdCodec();
    let decompressed = 0;
    const counting = {
      compress: codec.compress,
      decompress: (data: Buffer) => {
        decompressed++;
        return codec.decompress(data);
      }
    };
    const reader = await new ChunkStore(store.root, counting).reader(lists[4]);
    try {
      await reader.openPacks();
      const content = contents[4];
      // Every other page over the file, as a heap with holes: a frame used by eight ranges.
      const ranges = Array.from({ length: Math.floor(reader.chunks / 2) }, (_, i) => ({
        first: 2 * i,
        count: 1
      }));
      const got = Buffer.alloc(content.length);
      const seen: number[] = [];
      await reader.readRanges(ranges, (first, bytes) => {
        bytes.copy(got, first * CHUNK_BYTES);
        for (let chunk = 0; chunk * CHUNK_BYTES < bytes.length; chunk++) {
          seen.push(first + chunk);
        }
      });
      expect(seen.sort((a, b) => a - b)).toEqual(ranges.map(range => range.first));
      for (const { first } of ranges) {
        const at = first * CHUNK_BYTES;
        expect(
          got.subarray(at, at + CHUNK_BYTES).equals(content.subarray(at, at + CHUNK_BYTES))
        ).toBe(true);
      }
      // The frames holding an asked chunk (an even one), each decompressed once.
      const frames = new Set<string>();
      let start = 0;
      for (const run of lists[4].runs) {
        const even = run.count > 1 || start % 2 === 0;
        if (run.zstd !== undefined && even) {
          frames.add(`${run.pack}:${run.at}`);
        }
        start += run.count;
      }
      expect(frames.size).toBeGreaterThan(1);
      expect(decompressed).toBe(frames.size);
    } finally {
      await reader.close();
    }
  });

  it('readRanges refuses a damaged chunk of a frame, naming it', async () => {
    const zstore = new ChunkStore(path.join(dir, 'zr'), zstdCodec());
    const content = compressiblePages(32);
    const [list] = await ingestAll(zstore, [await writeFile('a', content)]);
    const ref = [...chunkRefs(list)][20];
    const bytes = await fs.readFile(zstore.packPath(ref.pack));
    bytes[ref.at + Math.floor(ref.stored / 2)] ^= 0x10;
    await fs.writeFile(zstore.packPath(ref.pack), bytes);
    const reader = await zstore.reader(list);
    try {
      const failure = await reader
        .readRanges([{ first: 16, count: 16 }], () => undefined)
        .catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(ChunkCorruptError);
      expect((failure as ChunkCorruptError).fileOffset).toBeGreaterThanOrEqual(16 * CHUNK_BYTES);
    } finally {
      await reader.close();
    }
  });

  it('readRanges checks raw chunks on the hash workers, and refuses a damaged one, naming it', async () => {
    const content = image(600);
    const [list] = await ingestAll(store, [await writeFile('raw', content)]);
    // Short ranges with holes between them, as a heap's eager pages are.
    const ranges = Array.from({ length: 200 }, (_, i) => ({ first: 3 * i, count: 2 }));
    const workers = HashWorkers.shared();
    expect(workers).not.toBeNull();
    const before = workers!.chunksChecked;
    const got = Buffer.alloc(content.length);
    const reader = await store.reader(list);
    try {
      await reader.openPacks();
      await reader.readRanges(ranges, (first, bytes) => bytes.copy(got, first * CHUNK_BYTES));
      expect(workers!.chunksChecked - before).toBe(400);
      for (const { first, count } of ranges) {
        const span = [first * CHUNK_BYTES, (first + count) * CHUNK_BYTES] as const;
        expect(got.subarray(...span).equals(content.subarray(...span))).toBe(true);
      }
    } finally {
      await reader.close();
    }

    const ref = [...chunkRefs(list)][301];
    const bytes = await fs.readFile(store.packPath(ref.pack));
    bytes[ref.at + 9] ^= 0x01;
    await fs.writeFile(store.packPath(ref.pack), bytes);
    const damaged = await store.reader(list);
    try {
      await damaged.openPacks();
      const used: number[] = [];
      const failure = await damaged
        .readRanges(ranges, first => used.push(first))
        .catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(ChunkCorruptError);
      expect((failure as ChunkCorruptError).fileOffset).toBe(301 * CHUNK_BYTES);
      // Its range (300, 301) never reached the sink.
      expect(used).not.toContain(300);
    } finally {
      await damaged.close();
    }
  });

  it('readRanges lets other work run while it reads raw chunks on this thread', async () => {
    // A restore stops the running kernel (a timer polls for its end) while the eager pages are
    // read: without hash workers these reads settle at once, and ran as one long task.
    process.env.KERNEL_CHECKPOINT_HASH_WORKERS = '0';
    const content = image(4096);
    const [list] = await ingestAll(store, [await writeFile('eager', content)]);
    const reader = await store.reader(list);
    try {
      await reader.openPacks();
      let timerRan = false;
      const timer = setTimeout(() => (timerRan = true), 0);
      let timerRanBeforeTheEnd = false;
      await reader.readRanges(
        Array.from({ length: 2048 }, (_, i) => ({ first: 2 * i, count: 1 })),
        () => (timerRanBeforeTheEnd ||= timerRan)
      );
      clearTimeout(timer);
      expect(timerRanBeforeTheEnd).toBe(true);
    } finally {
      delete process.env.KERNEL_CHECKPOINT_HASH_WORKERS;
      await reader.close();
    }
  });

  it('records each pack as written; a write to it, even at once, shows', async () => {
    const [list] = await ingestAll(store, [await writeFile('a', image(64))]);
    const pack = list.runs[0].pack;
    expect(await store.unchangedPacks([pack, 'zz-000000000000'])).toEqual(new Set([pack]));
    const handle = await fs.open(store.packPath(pack), 'r+');
    await handle.write(Buffer.from([1]), 0, 1, 100);
    await handle.close();
    expect(await store.unchangedPacks([pack])).toEqual(new Set());
  });

  it('a reader refuses a damaged chunk, naming it, and still reads the others', async () => {
    const content = image(64);
    const [list] = await ingestAll(store, [await writeFile('a', content)]);
    const ref = [...chunkRefs(list)][20];
    const bytes = await fs.readFile(store.packPath(ref.pack));
    bytes[ref.at + 7] ^= 0x40;
    await fs.writeFile(store.packPath(ref.pack), bytes);
    const reader = await store.reader(list);
    try {
      const failure = await reader.read(16, 8).catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(ChunkCorruptError);
      expect((failure as ChunkCorruptError).hash).toBe(ref.hash);
      expect((failure as ChunkCorruptError).fileOffset).toBe(20 * CHUNK_BYTES);
      const before = await reader.read(0, 20);
      expect(before.equals(content.subarray(0, 20 * CHUNK_BYTES))).toBe(true);
    } finally {
      await reader.close();
    }
  });
});

describe('integrity', () => {
  it('a flipped byte is an error naming the chunk, and images without it still restore', async () => {
    const shared = image(8);
    const a = Buffer.concat([shared, randomBytes(CHUNK_BYTES)]);
    const b = Buffer.concat([shared.subarray(0, 4 * CHUNK_BYTES), randomBytes(CHUNK_BYTES)]);
    const [listA] = await ingestAll(store, [await writeFile('a', a)]);
    const [listB] = await ingestAll(store, [await writeFile('b', b)]);
    // Damage the 7th page of the shared content, which only image a uses.
    const ref = [...chunkRefs(listA)][6];
    const packFile = store.packPath(ref.pack);
    const bytes = await fs.readFile(packFile);
    bytes[ref.at + 100] ^= 0x01;
    await fs.writeFile(packFile, bytes);

    const out = path.join(dir, 'restored');
    const failure = await store.materialize(listA, out).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ChunkCorruptError);
    expect((failure as ChunkCorruptError).hash).toBe(ref.hash);
    expect((failure as ChunkCorruptError).fileOffset).toBe(6 * CHUNK_BYTES);
    expect((failure as Error).message).toContain(ref.hash);
    expect((failure as Error).message).toContain('do not match its hash');
    // No half-written file is left behind.
    await expect(fs.stat(out)).rejects.toThrow(/ENOENT/);
    expect((await materialized(listB)).equals(b)).toBe(true);
  });

  it('the chunks of a large file are checked on the hash workers, and a damaged one refuses it', async () => {
    // 3 MiB: read in segments large enough for the workers (smaller ones are checked inline).
    const content = randomBytes(768 * CHUNK_BYTES);
    const [list] = await ingestAll(store, [await writeFile('big', content)]);
    const workers = HashWorkers.shared();
    expect(workers).not.toBeNull();
    const before = workers!.chunksChecked;
    expect((await materialized(list)).equals(content)).toBe(true);
    expect(workers!.chunksChecked - before).toBe(768);

    // A byte flipped in chunk 500 with the pack's mtime put back: the pack's identity is what it
    // was sealed with, and the rebuild still refuses the chunk before a byte of the file is used.
    const ref = [...chunkRefs(list)][500];
    const packFile = store.packPath(ref.pack);
    const stat = await fs.stat(packFile);
    const handle = await fs.open(packFile, 'r+');
    const one = Buffer.alloc(1);
    await handle.read(one, 0, 1, ref.at + 7);
    one[0] ^= 0x80;
    await handle.write(one, 0, 1, ref.at + 7);
    await handle.close();
    await fs.utimes(packFile, stat.atime, stat.mtime);
    const out = path.join(dir, 'restored');
    const failure = await store.materialize(list, out).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ChunkCorruptError);
    expect((failure as ChunkCorruptError).hash).toBe(ref.hash);
    expect((failure as ChunkCorruptError).fileOffset).toBe(500 * CHUNK_BYTES);
    await expect(fs.stat(out)).rejects.toThrow(/ENOENT/);
  });

  it('a missing pack is an error naming the chunk', async () => {
    const [list] = await ingestAll(store, [await writeFile('a', randomBytes(3 * CHUNK_BYTES))]);
    await fs.rm(store.packPath(list.runs[0].pack));
    await expect(store.materialize(list, path.join(dir, 'x'))).rejects.toThrow(
      /Chunk [0-9a-f]{32} .*its pack is missing/
    );
  });
});

describe('garbage collection', () => {
  it('deleting an image frees the packs only it used; shared chunks stay', async () => {
    const base = image(256);
    const [a] = await ingestAll(store, [await writeFile('a', base)]);
    const edited = Buffer.from(base);
    randomBytes(CHUNK_BYTES).copy(edited, 0);
    const [b] = await ingestAll(store, [await writeFile('b', edited)]);
    await ingestAll(store, [await writeFile('c', randomBytes(64 * CHUNK_BYTES))]);
    expect(await packFiles()).toHaveLength(3);

    // Delete c: its pack goes, and its bytes come back.
    let report = await store.gc(async () => [a, b]);
    expect(report.packsRemoved).toBe(1);
    expect(report.bytesFreed).toBeGreaterThanOrEqual(64 * CHUNK_BYTES);
    expect(await packFiles()).toHaveLength(2);
    // Delete a: b still uses all but one page of a's pack, which must stay.
    report = await store.gc(async () => [b]);
    expect(report.packsRemoved).toBe(0);
    expect((await materialized(b)).equals(edited)).toBe(true);
    report = await store.gc(async () => []);
    expect(report.packsRemoved).toBe(2);
    expect(await packFiles()).toEqual([]);
    // Their identities go with them.
    expect(await fs.readdir(path.join(store.root, 'sealed'))).toEqual([]);
  });

  it("gives back an older image's replaced array though later images keep its changed pages", async () => {
    // Three checkpoints in a line: each changes a page of the interpreter's and replaces the
    // array. Deleting the middle one must give its array back, though the newest still uses the
    // page it changed (with one pack per ingest, that page kept the array's pack alive).
    const heap = randomBytes(16 * CHUNK_BYTES);
    const checkpoint = (page: number) => {
      randomBytes(CHUNK_BYTES).copy(heap, page * CHUNK_BYTES);
      return Buffer.concat([heap, randomBytes(1024 * CHUNK_BYTES)]);
    };
    const [a] = await ingestAll(store, [await writeFile('a', checkpoint(1))]);
    await ingestAll(store, [await writeFile('b', checkpoint(3))]);
    const c = checkpoint(5);
    const [listC] = await ingestAll(store, [await writeFile('c', c)]);
    const report = await store.gc(async () => [a, listC]);
    // All of it but the run's first LONG_RUN_CHUNKS and its last frame (kept with the short runs).
    expect(report.bytesFreed).toBeGreaterThanOrEqual(
      (1024 - LONG_RUN_CHUNKS - FRAME_CHUNKS) * CHUNK_BYTES
    );
    expect((await materialized(listC)).equals(c)).toBe(true);
  });

  it('keeps the pages right after an array out of its pack, so later images do not keep it', async () => {
    // As CRIU writes them: the array's pages, then, still new, pages of the interpreter's (they
    // compress), which the next image uses again while its array is another.
    const zstore = new ChunkStore(path.join(dir, 'zchunks'), zstdCodec());
    const text = (seed: number) =>
      Buffer.from(`page ${seed} `.repeat(CHUNK_BYTES).slice(0, CHUNK_BYTES), 'latin1');
    const after = Buffer.concat(Array.from({ length: 40 }, (_, k) => text(k)));
    // Each image changes some of those pages; the next keeps what the one before changed.
    const checkpoint = (changes: Record<number, number>) => {
      const changed = Buffer.from(after);
      for (const [page, seed] of Object.entries(changes)) {
        text(seed).copy(changed, Number(page) * CHUNK_BYTES);
      }
      return Buffer.concat([randomBytes(CHUNK_BYTES), randomBytes(1024 * CHUNK_BYTES), changed]);
    };
    const [a] = await ingestAll(zstore, [await writeFile('a', checkpoint({}))]);
    await ingestAll(zstore, [await writeFile('b', checkpoint({ 0: 1000 }))]);
    const c = checkpoint({ 0: 1000, 5: 1001 });
    const [listC] = await ingestAll(zstore, [await writeFile('c', c)]);
    const report = await zstore.gc(async () => [a, listC]);
    expect(report.bytesFreed).toBeGreaterThanOrEqual(
      (1024 - LONG_RUN_CHUNKS - FRAME_CHUNKS) * CHUNK_BYTES
    );
    expect((await materialized(listC, zstore)).equals(c)).toBe(true);
  });

  it('never sweeps a pack an ingest took while the collection was marking', async () => {
    const base = image(32);
    // An image whose record is deleted: its pack is garbage, until a new ingest reuses it.
    await ingestAll(store, [await writeFile('a', base)]);
    const writer = new ChunkStore(store.root);
    const file = await writeFile('b', base);
    let reused: ChunkList | null = null;
    let calls = 0;
    const report = await store.gc(async () => {
      calls++;
      if (calls === 1) {
        // Between the first mark and the sweep, another supervisor ingests the same pages and
        // commits its image.
        reused = (await ingestAll(writer, [file]))[0];
        return [];
      }
      return reused ? [reused] : [];
    });
    expect(calls).toBe(2);
    expect(report.packsRemoved).toBe(0);
    expect((await materialized(reused!)).equals(base)).toBe(true);
  });

  it('a pack in use by an ingest still running is kept (its refs file names it)', async () => {
    const base = image(16);
    await ingestAll(store, [await writeFile('a', base)]);
    const session = await store.begin({ durable: false });
    const list = await session.ingest(await writeFile('b', base));
    await store.gc(async () => []);
    await session.finish();
    expect((await materialized(list)).equals(base)).toBe(true);
    await session.close();
    await store.gc(async () => []);
    expect(await packFiles()).toEqual([]);
  });
});

describe('kill -9', () => {
  let bundle: string;

  beforeAll(() => {
    bundle = path.join(os.tmpdir(), `kc-chunks-bundle-${process.pid}.cjs`);
    buildSync({
      entryPoints: [path.join(__dirname, '..', 'chunks.ts')],
      bundle: true,
      platform: 'node',
      format: 'cjs',
      outfile: bundle,
      logLevel: 'silent'
    });
  });

  afterAll(async () => {
    await fs.rm(bundle, { force: true });
  });

  /**
   * Runs `script` in a child node process (ChunkStore in scope); resolves with its signal. When
   * `killWhen` is given, it is polled every millisecond and the child is killed (-9) once it holds.
   */
  function child(
    script: string,
    env: Record<string, string>,
    killWhen?: () => Promise<boolean>
  ): Promise<string> {
    const code = `const { ChunkStore, encodeChunkLists, decodeChunkLists } = require(${JSON.stringify(bundle)});
      const fs = require('node:fs');
      (async () => { ${script} })().catch(e => { console.error(e); process.exit(3); });`;
    return runNode(code, env, killWhen);
  }

  async function committed(): Promise<ChunkList[]> {
    const file = path.join(dir, 'committed.bin');
    const data = await fs.readFile(file).catch(() => null);
    return data ? Object.values(decodeChunkLists(data)) : [];
  }

  // A child that commits image a (its list, renamed into place as a store would), then dies in
  // the middle of ingesting b, which shares most pages with a. KILL_AT: "ingest" (the test kills
  // it once b's temporary pack exists), "finished" (b's pack is in place, its image not
  // committed: it kills itself).
  const ingestScript = `
    const store = new ChunkStore(process.env.ROOT);
    let s = await store.begin();
    const a = await s.ingest(process.env.A);
    await s.finish();
    fs.writeFileSync(process.env.COMMITTED + '.tmp', encodeChunkLists({ a }));
    fs.renameSync(process.env.COMMITTED + '.tmp', process.env.COMMITTED);
    await s.close();
    s = await store.begin();
    await s.ingest(process.env.B);
    await s.finish();
    if (process.env.KILL_AT === 'finished') process.kill(process.pid, 'SIGKILL');
    await new Promise(r => setTimeout(r, 60000));
  `;

  it.each(['ingest', 'finished'])(
    'during an ingest (%s): no referenced chunk is lost, the leak is collected',
    async killAt => {
      const a = image(256);
      const pages = pagesOf(a);
      // b: a's pages, then 64 MiB of new ones (enough to still be running when killed).
      const b = Buffer.concat([image(256, pages), randomBytes(64 << 20)]);
      const temporary = async () =>
        (await packFiles().catch(() => [])).filter(name => name.startsWith('.tmp-'));
      const signal = await child(
        ingestScript,
        {
          ROOT: store.root,
          A: await writeFile('a', a),
          B: await writeFile('b', b),
          COMMITTED: path.join(dir, 'committed.bin'),
          KILL_AT: killAt
        },
        // b's temporary pack: a's image is committed first.
        killAt === 'ingest'
          ? async () => (await committed()).length > 0 && (await temporary()).length > 0
          : undefined
      );
      expect(signal).toBe('SIGKILL');
      const live = await committed();
      expect(live).toHaveLength(1);
      // The dead ingest left its claim behind, and its temporary pack when it died cutting b.
      expect(await fs.readdir(path.join(store.root, 'writers'))).toHaveLength(1);
      expect(await temporary()).toHaveLength(killAt === 'ingest' ? 1 : 0);
      await store.gc(async () => live);
      expect((await materialized(live[0])).equals(a)).toBe(true);
      // Only a's pack is left: the dead ingest's files are gone.
      expect(await packFiles()).toEqual([`${live[0].runs[0].pack}.pack`]);
      expect(await fs.readdir(path.join(store.root, 'writers'))).toEqual([]);
    },
    60000
  );

  // A child collection over a store with one live image and 40 garbage packs, killed at a given
  // point: before sweeping (KILL_AT=mark, after the first mark), with packs in doomed/
  // (KILL_AT=sweep, at the second mark), the same after another ingest took a garbage pack
  // during the first mark (KILL_AT=race), or by a timer (KILL_AT=timer).
  const gcScript = `
    const store = new ChunkStore(process.env.ROOT);
    const live = Object.values(decodeChunkLists(fs.readFileSync(process.env.COMMITTED)));
    let calls = 0;
    if (process.env.KILL_AT === 'timer') {
      setTimeout(() => process.kill(process.pid, 'SIGKILL'), Number(process.env.DELAY));
    }
    await store.gc(async () => {
      calls++;
      if (process.env.KILL_AT === 'race' && calls === 1) {
        // Another supervisor ingests pages of a garbage pack, and commits, while this marks.
        const session = await new ChunkStore(process.env.ROOT).begin();
        const g = await session.ingest(process.env.G);
        await session.finish();
        fs.writeFileSync(process.env.RACED, encodeChunkLists({ g }));
        await session.close();
        return live;
      }
      if (process.env.KILL_AT === 'race' && calls === 2) {
        process.kill(process.pid, 'SIGKILL');
        await new Promise(r => setTimeout(r, 60000));
      }
      if ((process.env.KILL_AT === 'mark' && calls === 1) || (process.env.KILL_AT === 'sweep' && calls === 2)) {
        process.kill(process.pid, 'SIGKILL');
        await new Promise(r => setTimeout(r, 60000));
      }
      return live;
    });
  `;

  it.each([
    ['mark', '0'],
    ['sweep', '0'],
    ['race', '0'],
    ['timer', '2'],
    ['timer', '10']
  ])(
    'during a collection (%s, %s ms): every live image restores, the garbage goes next time',
    async (killAt, delay) => {
      const a = image(128);
      const [live] = await ingestAll(store, [await writeFile('a', a)]);
      await fs.writeFile(path.join(dir, 'committed.bin'), encodeChunkLists({ a: live }));
      for (let i = 0; i < 40; i++) {
        // Garbage that shares pages with the live image (so dedup points into its pack too).
        await ingestAll(store, [await writeFile(`g${i}`, image(4, pagesOf(a).slice(0, 2)))]);
      }
      const raced = path.join(dir, 'raced.bin');
      expect(await packFiles()).toHaveLength(41);
      const signal = await child(gcScript, {
        ROOT: store.root,
        COMMITTED: path.join(dir, 'committed.bin'),
        KILL_AT: killAt,
        DELAY: delay,
        G: path.join(dir, 'g0'),
        RACED: raced
      });
      expect(signal).toBe('SIGKILL');
      const others = await fs.readFile(raced).then(
        data => Object.values(decodeChunkLists(data)),
        () => []
      );
      if (killAt === 'race') {
        // The image committed during the collection uses a pack that is now in doomed/.
        expect(others).toHaveLength(1);
        expect(await fs.readdir(path.join(store.root, 'doomed'))).toContain(
          `${others[0].runs[others[0].runs.length - 1].pack}.pack`
        );
        expect(
          (await materialized(others[0])).equals(await fs.readFile(path.join(dir, 'g0')))
        ).toBe(true);
      }
      if (killAt === 'sweep') {
        // Killed with every garbage pack in doomed/: the worst moment.
        expect(await fs.readdir(path.join(store.root, 'doomed'))).toHaveLength(40);
      }
      // Readable at once, before any new collection runs.
      expect((await materialized(live)).equals(a)).toBe(true);
      // A new image made now dedups against what is really there.
      const [again] = await ingestAll(store, [await writeFile('again', a)]);
      expect((await materialized(again)).equals(a)).toBe(true);
      // The next collection (its lock's holder is dead) finishes the work.
      await store.gc(async () => [live, again, ...others]);
      const kept = new Set(
        [live, ...others].flatMap(list => list.runs.map(run => `${run.pack}.pack`))
      );
      expect(await packFiles()).toEqual([...kept].sort());
      expect(await fs.readdir(path.join(store.root, 'doomed'))).toEqual([]);
      expect((await materialized(live)).equals(a)).toBe(true);
      for (const list of others) {
        expect((await materialized(list)).equals(await fs.readFile(path.join(dir, 'g0')))).toBe(
          true
        );
      }
    },
    60000
  );
});

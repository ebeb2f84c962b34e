// The chunk store: image files kept as content-addressed 4 KiB chunks, each stored once for the
// whole store (across checkpoints, branches and kernels). Why 4 KiB chunks, xxh3-128 and packs
// rather than one file per chunk: docs/architecture.md, with the figures in bench/README.md.
//
// Layout under <root> (folders 0700, files 0600):
//   packs/<name>.pack       immutable once renamed into place: new chunks of one ingest (its
//                           short runs of new chunks in one pack, each long run in its own),
//                           raw, or with a codec in zstd frames of up to 16 consecutive ones,
//                           then an index of them (hash, where, sizes, slot in a frame) and a
//                           trailer; written as packs/.tmp-<pid>-<name>.pack, flushed, renamed.
//   writers/<pid>-<r>.refs  one per ingest in progress: the name of every pack its chunk lists
//                           use, appended before it relies on that pack (a live list that
//                           garbage collection reads).
//   doomed/<name>.pack      packs garbage collection is about to delete; restored on its next run.
//   sealed/<name>           a pack's identity (size, inode, mtime) when it was written whole: a
//                           pack unchanged since need not be read to be trusted (`unchangedPacks`).
//   gc.lock                 held by the one garbage collection running (its pid).
//
// Garbage collection is mark-and-sweep over packs, safe against kill -9 anywhere: only packs that
// existed when it started are candidates; the unmarked ones are first renamed into doomed/, then
// the live lists are read again (an ingest that took a pack in the meantime has named it in its
// refs file, or has committed its image), and only what is still unmarked is deleted. Readers
// look in doomed/ too, so an interrupted collection never hides a chunk.

import { randomBytes } from 'node:crypto';
import { promises as fs, readSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { createXXHash128, type IHasher } from 'hash-wasm';

import { HashWorkers, type HashRun } from './hash-workers';

/**
 * A run of new chunks (consecutive in a file, none in the store yet) longer than this goes on
 * into a pack of its own: a pack is given back only when no image uses any chunk of it, and the
 * pages a later checkpoint keeps using (the interpreter's, changed once) sit in short runs,
 * while memory that dies with its image (an array replaced by another) is one long run. With a
 * single pack per ingest, deleting any checkpoint of a line but the newest freed nothing. (Only
 * frames zstd cannot shrink join it, and not the run's last: see `storeWaiting` in `ingest`.)
 */
export const LONG_RUN_CHUNKS = 256;

/** The size of a chunk: a memory page, so that a page CRIU writes is one chunk. */
export const CHUNK_BYTES = 4096;
/** Bytes of a chunk's identity: xxh3-128 of its bytes (its length is known from the list). */
export const HASH_BYTES = 16;

const PACK_MAGIC = Buffer.from('KCPACK01');
const TRAILER_BYTES = 8 + 8 + 4 + 4; // magic, index offset, count, reserved
const INDEX_ENTRY_BYTES = HASH_BYTES + 8 + 4 + 4 + 4; // hash, at, stored, length, frame slot
/** At most this many consecutive new chunks are compressed together (one zstd frame). */
export const FRAME_CHUNKS = 16;
/**
 * A frame is kept compressed only when it saves at least this share of its bytes: reading a
 * frame back costs a decompression on every restore (1 GiB of random floats, which zstd shrinks
 * by 6-9 %, rebuilt in 4.1 s compressed against 1.0 s raw), which a mixed state's frames (that
 * halve) are worth and random data's are not.
 */
const WORTH_COMPRESSING = 0.2;
/** How many runs ahead materialize starts reading and decompressing frames. */
const FRAMES_AHEAD = 16;
/** Reads and writes move this much at a time (a whole number of chunks). */
const BLOCK_BYTES = 4 << 20;
/** How long `readRanges` reads raw chunks on this thread before letting other work run. */
const RAW_SLICE_MS = 2;
/** Raw chunks `readRanges` hands the hash workers at a time, and how many such batches at once. */
const RAW_BATCH_BYTES = 1 << 20;
const RAW_BATCHES_AT_ONCE = 4;

/**
 * A run of chunks of one file that lie one after the other in one pack: raw, from `at` on; or,
 * with `zstd`, slots `slot`.. of the compressed frame of `zstd` bytes at `at`.
 */
export interface ChunkRun {
  pack: string;
  at: number;
  count: number;
  zstd?: number;
  slot?: number;
}

/** Compression for new chunks (zstd: see `zstdCodec` in zstd.ts). */
export interface Codec {
  compress(data: Buffer): Promise<Buffer>;
  decompress(data: Buffer): Promise<Buffer>;
}

/**
 * A file as chunks: chunk i holds the file's bytes [i * CHUNK_BYTES, min((i + 1) * CHUNK_BYTES,
 * bytes)), its identity is hashes[i * HASH_BYTES, (i + 1) * HASH_BYTES), and the runs, in order,
 * say where each one is stored.
 */
export interface ChunkList {
  bytes: number;
  hashes: Buffer;
  runs: ChunkRun[];
}

/** One chunk of a list, spelled out (what `chunkRefs` yields). */
export interface ChunkRef {
  hash: string;
  /** Offset in the file, and length. */
  offset: number;
  length: number;
  pack: string;
  /** Offset in the pack, and bytes there. */
  at: number;
  stored: number;
  compressed: boolean;
}

/** A chunk whose bytes do not match its hash (or cannot be read): the image using it is damaged. */
export class ChunkCorruptError extends Error {
  constructor(
    readonly hash: string,
    readonly pack: string,
    readonly fileOffset: number,
    detail: string
  ) {
    super(`Chunk ${hash} (pack ${pack}, file offset ${fileOffset}) is damaged: ${detail}.`);
    this.name = 'ChunkCorruptError';
  }
}

export interface GcReport {
  packsRemoved: number;
  bytesFreed: number;
}

export interface ImageUsage {
  /** The size of the image's files. */
  bytes: number;
  /** Stored bytes of the distinct chunks it uses. */
  storedBytes: number;
  /** Stored bytes of the chunks no other image uses: what deleting it frees, at most. */
  exclusiveBytes: number;
  /** Bytes of the packs only it uses: what deleting it and collecting frees at once. */
  freedBytes: number;
}

export interface StoreUsage {
  /** Bytes of every pack on disk. */
  totalBytes: number;
  /** Bytes of packs no list uses (collected by the next `gc`). */
  garbageBytes: number;
  images: Record<string, ImageUsage>;
}

export function chunkCount(bytes: number): number {
  return Math.ceil(bytes / CHUNK_BYTES);
}

function chunkLength(list: ChunkList, index: number): number {
  return Math.min(CHUNK_BYTES, list.bytes - index * CHUNK_BYTES);
}

/**
 * Every chunk of a list, in file order. The chunks of a compressed frame share its place (`at`)
 * and its stored bytes.
 */
export function* chunkRefs(list: ChunkList): Generator<ChunkRef> {
  let index = 0;
  for (const run of list.runs) {
    let at = run.at;
    for (let k = 0; k < run.count; k++, index++) {
      const length = chunkLength(list, index);
      yield {
        hash: list.hashes.toString('hex', index * HASH_BYTES, (index + 1) * HASH_BYTES),
        offset: index * CHUNK_BYTES,
        length,
        pack: run.pack,
        at,
        stored: run.zstd ?? length,
        compressed: run.zstd !== undefined
      };
      if (run.zstd === undefined) {
        at += length;
      }
    }
  }
}

let hasherPromise: Promise<IHasher> | null = null;

/** xxh3-128 of one chunk (the wasm hasher is reused: no allocation per chunk). */
async function hasher(): Promise<(chunk: Uint8Array) => Uint8Array> {
  hasherPromise ??= createXXHash128();
  const h = await hasherPromise;
  return chunk => {
    h.init();
    h.update(chunk);
    return h.digest('binary');
  };
}

/** Where a chunk is: raw at `at`, or slot `slot` of the zstd frame of `zstd` bytes at `at`. */
interface Location {
  pack: string;
  at: number;
  zstd?: number;
  slot?: number;
}

/** An entry of a pack's index (frameSlot 0: raw; k + 1: slot k of a zstd frame). */
interface IndexEntry {
  hash: Buffer;
  at: number;
  stored: number;
  length: number;
  frameSlot: number;
}

function locationOf(pack: string, entry: IndexEntry): Location {
  return entry.frameSlot === 0
    ? { pack, at: entry.at }
    : { pack, at: entry.at, zstd: entry.stored, slot: entry.frameSlot - 1 };
}

/** Bytes of chunks [first, first + count) of a list (only its last chunk may be short). */
function spanBytes(list: ChunkList, first: number, count: number): number {
  return Math.min(list.bytes, (first + count) * CHUNK_BYTES) - first * CHUNK_BYTES;
}

/** Checks chunks of one list against their hashes; `failure` names a chunk by its index. */
interface ChunkVerifier {
  /** Checks `count` chunks from chunk `first` on, laid one after the other in `bytes`. */
  check(first: number, count: number, bytes: Buffer, pack: string): void;
  failure(chunk: number, pack: string, problem: string): ChunkCorruptError;
}

async function chunkVerifier(list: ChunkList): Promise<ChunkVerifier> {
  const digest = await hasher();
  const failure = (chunk: number, pack: string, problem: string) =>
    new ChunkCorruptError(
      list.hashes.toString('hex', chunk * HASH_BYTES, (chunk + 1) * HASH_BYTES),
      pack,
      chunk * CHUNK_BYTES,
      problem
    );
  return {
    failure,
    check(first, count, bytes, pack) {
      for (let k = 0, start = 0; k < count; k++) {
        const chunk = first + k;
        const length = chunkLength(list, chunk);
        if (start + length > bytes.length) {
          throw failure(chunk, pack, 'its pack is too short');
        }
        const actual = digest(bytes.subarray(start, start + length));
        const at = chunk * HASH_BYTES;
        if (list.hashes.compare(actual, 0, HASH_BYTES, at, at + HASH_BYTES) !== 0) {
          throw failure(chunk, pack, 'its bytes do not match its hash');
        }
        start += length;
      }
    }
  };
}

/** The hashes chunks [first, first + count) of each run must have, one after the other. */
function hashesOf(list: ChunkList, runs: ReadonlyArray<{ first: number; count: number }>): Buffer {
  return Buffer.concat(
    runs.map(({ first, count }) =>
      list.hashes.subarray(first * HASH_BYTES, (first + count) * HASH_BYTES)
    )
  );
}

/**
 * The checks of the raw pieces of a file's segments on hash workers, each segment's started once
 * its bytes are read: `done(segment)` resolves to whether its raw pieces were all checked there
 * (false: the caller checks them itself), and rejects with the ChunkCorruptError of a mismatch.
 */
function segmentChecks(
  list: ChunkList,
  segments: ReadSegment[],
  pieces: ReadPiece[],
  workers: HashWorkers,
  verify: ChunkVerifier
): {
  start(segment: number, read: Promise<Buffer | string>, io: InFlight): void;
  done(segment: number): Promise<boolean>;
} {
  const raw = new Map<number, ReadPiece[]>();
  for (const piece of pieces) {
    if (!piece.zstd) {
      raw.set(piece.segment, [...(raw.get(piece.segment) ?? []), piece]);
    }
  }
  const checks = new Map<number, Promise<boolean>>();
  const check = async (segment: number, bytes: Buffer | string): Promise<boolean> => {
    const own = raw.get(segment) ?? [];
    if (
      typeof bytes === 'string' ||
      !(bytes.buffer instanceof SharedArrayBuffer) ||
      own.some(piece => piece.offset + piece.bytes > bytes.length)
    ) {
      return false;
    }
    const runs: HashRun[] = own.map(piece => ({
      offset: piece.offset,
      first: piece.first,
      count: piece.count,
      lastLength: piece.bytes - (piece.count - 1) * CHUNK_BYTES
    }));
    const expected = hashesOf(list, own);
    const bad = await workers.check(bytes, runs, expected).catch(() => null);
    if (bad === null) {
      return false;
    }
    if (bad >= 0) {
      throw verify.failure(bad, segments[segment].pack, 'its bytes do not match its hash');
    }
    return true;
  };
  return {
    start(segment, read, io) {
      if (raw.has(segment)) {
        const done = io.track(read.then(bytes => check(segment, bytes)));
        // Seen by `done`, not as an unhandled rejection.
        done.catch(() => undefined);
        checks.set(segment, done);
      }
    },
    async done(segment) {
      return (await checks.get(segment)) ?? false;
    }
  };
}

/** Bytes [start, end) of one pack, read with one call for every piece that lies in it. */
export interface ReadSegment {
  pack: string;
  start: number;
  end: number;
  /** The last piece that uses it (its buffer is let go after that one). */
  lastPiece: number;
  /** The file offset of its first piece. */
  fileAt: number;
  /** Writes still reading its bytes (while it is rebuilt). */
  writes: Array<Promise<unknown>>;
}

/**
 * Consecutive chunks of a file that one read gives: raw bytes at `offset` in its segment, or
 * slots `slot`.. of the zstd frame of `stored` bytes there.
 */
export interface ReadPiece {
  segment: number;
  offset: number;
  /** Bytes in the pack: the raw bytes, or the frame's compressed bytes. */
  stored: number;
  first: number;
  count: number;
  /** Bytes of the file it gives. */
  bytes: number;
  zstd: boolean;
  slot: number;
}

/** A piece joins its pack's newest segment when it starts at most this far past its end... */
const READ_GAP_BYTES = 64 << 10;
/** ...the segment stays within this size... */
const SEGMENT_BYTES = 4 << 20;
/** ...and within this much of the file from its first piece (what stays in memory is bounded). */
const SEGMENT_SPAN_BYTES = 64 << 20;
/** Segments are read while fewer than this many of their bytes are waiting to be used. */
const READ_AHEAD_BYTES = 64 << 20;

/**
 * The reads that rebuild a file: its runs cut into pieces of at most SEGMENT_BYTES, and the
 * pieces of one pack that lie close together in it read as one segment. Segments come in the
 * order of their first use. The chunks of a run lie one after the other in its pack, and an
 * ingest writes a file's new chunks in file order, so the runs of one pack mostly go forward.
 */
export function planReads(list: ChunkList): { segments: ReadSegment[]; pieces: ReadPiece[] } {
  const segments: ReadSegment[] = [];
  const pieces: ReadPiece[] = [];
  const newest = new Map<string, number>();
  const place = (pack: string, at: number, stored: number, fileAt: number): ReadSegment => {
    const index = newest.get(pack);
    const segment = index === undefined ? undefined : segments[index];
    if (
      segment &&
      at >= segment.start &&
      at <= segment.end + READ_GAP_BYTES &&
      at + stored - segment.start <= SEGMENT_BYTES &&
      fileAt - segment.fileAt <= SEGMENT_SPAN_BYTES
    ) {
      segment.end = Math.max(segment.end, at + stored);
      segment.lastPiece = pieces.length;
      return segment;
    }
    const added = {
      pack,
      start: at,
      end: at + stored,
      lastPiece: pieces.length,
      fileAt,
      writes: []
    };
    newest.set(pack, segments.length);
    segments.push(added);
    return added;
  };
  let first = 0;
  for (const run of list.runs) {
    if (run.zstd !== undefined) {
      const segment = place(run.pack, run.at, run.zstd, first * CHUNK_BYTES);
      pieces.push({
        segment: newest.get(run.pack) as number,
        offset: run.at - segment.start,
        stored: run.zstd,
        first,
        count: run.count,
        bytes: spanBytes(list, first, run.count),
        zstd: true,
        slot: run.slot ?? 0
      });
      first += run.count;
      continue;
    }
    for (let done = 0; done < run.count;) {
      const count = Math.min(run.count - done, SEGMENT_BYTES / CHUNK_BYTES);
      const bytes = spanBytes(list, first, count);
      const at = run.at + done * CHUNK_BYTES;
      const segment = place(run.pack, at, bytes, first * CHUNK_BYTES);
      pieces.push({
        segment: newest.get(run.pack) as number,
        offset: at - segment.start,
        stored: bytes,
        first,
        count,
        bytes,
        zstd: false,
        slot: 0
      });
      first += count;
      done += count;
    }
  }
  if (first !== chunkCount(list.bytes)) {
    throw new Error(`the chunk list covers ${first} chunks of ${chunkCount(list.bytes)}`);
  }
  return { segments, pieces };
}

/** The packs one reader has open, opened once each. */
class PackHandles {
  private readonly handles = new Map<string, Promise<fs.FileHandle>>();

  constructor(private readonly open: (name: string) => Promise<fs.FileHandle>) {}

  get(name: string): Promise<fs.FileHandle> {
    let handle = this.handles.get(name);
    if (!handle) {
      handle = this.open(name);
      // Seen when used; not an unhandled rejection before that.
      handle.catch(() => undefined);
      this.handles.set(name, handle);
    }
    return handle;
  }

  async close(): Promise<void> {
    for (const handle of this.handles.values()) {
      await handle.then(
        opened => opened.close(),
        () => undefined
      );
    }
    this.handles.clear();
  }
}

/** Reads and writes still running, waited for before their file handles are closed. */
class InFlight {
  private readonly running = new Set<Promise<unknown>>();

  track<T>(work: Promise<T>): Promise<T> {
    this.running.add(work);
    const done = () => this.running.delete(work);
    work.then(done, done);
    return work;
  }

  async settled(): Promise<void> {
    await Promise.allSettled([...this.running]);
  }
}

/**
 * Buffers of BLOCK_BYTES used again and again: a fresh buffer of megabytes costs a page fault for
 * every 4 KiB of it on first use (as much again as the copy that fills it).
 */
class BlockPool {
  private readonly free: Buffer[] = [];

  /** `shared`: blocks lie in SharedArrayBuffers, for hash workers to read in place. */
  constructor(private readonly shared = false) {}

  take(bytes: number): Buffer {
    if (bytes < BLOCK_BYTES / 4) {
      return Buffer.allocUnsafe(bytes);
    }
    return (
      this.free.pop() ??
      (this.shared
        ? Buffer.from(new SharedArrayBuffer(BLOCK_BYTES))
        : Buffer.allocUnsafe(BLOCK_BYTES))
    ).subarray(0, bytes);
  }

  give(bytes: Buffer): void {
    if (bytes.buffer.byteLength === BLOCK_BYTES && bytes.byteOffset === 0) {
      this.free.push(Buffer.from(bytes.buffer, 0, BLOCK_BYTES));
    }
  }
}

/** A segment's bytes, or what kept them from being read. */
async function readSegment(
  packs: PackHandles,
  segment: ReadSegment,
  pool: BlockPool
): Promise<Buffer | string> {
  let handle: fs.FileHandle;
  try {
    handle = await packs.get(segment.pack);
  } catch {
    return 'its pack is missing';
  }
  const bytes = pool.take(segment.end - segment.start);
  try {
    return bytes.subarray(0, await readFully(handle, bytes, segment.start));
  } catch {
    pool.give(bytes);
    return 'its pack cannot be read';
  }
}

/** Writes handed to libuv's pool at once. */
const WRITES_IN_FLIGHT = 3;
/** Pieces this large are written from the bytes read (no copy); smaller ones are gathered. */
const DIRECT_WRITE_BYTES = 1 << 20;

/**
 * Writes a file front to back, a few writes in flight at a time: small pieces gathered into
 * blocks, large ones written from where they are.
 */
class BlockWriter {
  private block: Buffer;
  private filled = 0;
  private blockAt = 0;
  private readonly writing: Promise<void>[] = [];

  constructor(
    private readonly out: fs.FileHandle,
    private readonly io: InFlight,
    private readonly pool: BlockPool
  ) {
    this.block = pool.take(BLOCK_BYTES);
  }

  /**
   * Writes `bytes` (which go right after the bytes written before); the returned promise of
   * `written` resolves once `bytes` may be used again.
   */
  async write(bytes: Buffer, position: number): Promise<{ written: Promise<unknown> }> {
    if (bytes.length >= DIRECT_WRITE_BYTES) {
      // Large enough to be written from where it is, without a copy.
      await this.flush();
      return this.issue(writeFully(this.out, bytes, position));
    }
    for (let done = 0; done < bytes.length;) {
      if (this.filled === this.block.length) {
        await this.flush();
      }
      if (this.filled === 0) {
        this.blockAt = position + done;
      }
      const copied = bytes.copy(this.block, this.filled, done);
      this.filled += copied;
      done += copied;
    }
    return { written: Promise.resolve() };
  }

  async end(): Promise<void> {
    await this.flush();
    for (const write of this.writing.splice(0)) {
      await write;
    }
  }

  private async flush(): Promise<void> {
    if (this.filled === 0) {
      return;
    }
    const block = this.block;
    await this.issue(
      writeFully(this.out, block.subarray(0, this.filled), this.blockAt).finally(() =>
        this.pool.give(block)
      )
    );
    this.block = this.pool.take(BLOCK_BYTES);
    this.filled = 0;
  }

  /** Tracks a write; waits for the oldest when too many are in flight. */
  private async issue(write: Promise<void>): Promise<{ written: Promise<unknown> }> {
    const tracked = this.io.track(write);
    // Its failure is seen by `end` or by the wait below, not as an unhandled rejection.
    tracked.catch(() => undefined);
    this.writing.push(tracked);
    if (this.writing.length > WRITES_IN_FLIGHT) {
      await this.writing.shift();
    }
    return { written: tracked };
  }
}

async function writeFully(handle: fs.FileHandle, bytes: Buffer, position: number): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, position + done);
    done += bytesWritten;
  }
}

/**
 * Chunks of one list by position, each checked against its hash (see ChunkStore.reader). Reads
 * may run at once; a damaged or missing chunk throws ChunkCorruptError.
 */
export class ChunkListReader {
  /** The first chunk of each run. */
  private readonly starts: number[] = [];

  constructor(
    readonly list: ChunkList,
    private readonly verify: ChunkVerifier,
    private readonly packs: PackHandles,
    private readonly codec: Codec | null
  ) {
    let first = 0;
    for (const run of list.runs) {
      this.starts.push(first);
      first += run.count;
    }
  }

  /** Chunks of the file. */
  get chunks(): number {
    return chunkCount(this.list.bytes);
  }

  /**
   * Chunks [first, first + count) of the file, i.e. its bytes from first * CHUNK_BYTES on, into
   * `into` (from its start) or a new buffer.
   */
  async read(first: number, count: number, into?: Buffer): Promise<Buffer> {
    this.checkRange(first, count);
    const bytes = spanBytes(this.list, first, count);
    const out = into ?? Buffer.allocUnsafe(bytes);
    if (out.length < bytes) {
      throw new RangeError(`${bytes} bytes do not fit in a buffer of ${out.length}`);
    }
    for (let run = this.runOf(first), done = 0; done < count; run++) {
      const { pack, at, zstd, slot } = this.list.runs[run];
      const chunk = first + done;
      const skip = chunk - this.starts[run];
      const n = Math.min(this.list.runs[run].count - skip, count - done);
      const length = spanBytes(this.list, chunk, n);
      const target = out.subarray(chunk * CHUNK_BYTES - first * CHUNK_BYTES);
      // Read on this thread when `openPacks` has opened it (see readSync); else on the pool.
      const fd = this.open.get(pack);
      const handle =
        fd ??
        (await this.packs.get(pack).catch(() => {
          throw this.verify.failure(chunk, pack, 'its pack is missing');
        }));
      const readAt = (into: Buffer, position: number): Promise<number> =>
        typeof handle === 'number'
          ? Promise.resolve(readFullySync(handle, into, position))
          : readFully(handle, into, position);
      let slice: Buffer;
      if (zstd === undefined) {
        slice = target.subarray(0, length);
        slice = slice.subarray(0, await readAt(slice, at + skip * CHUNK_BYTES));
      } else {
        const stored = Buffer.allocUnsafe(zstd);
        const frame = await readAt(stored, at)
          .then(read => (this.codec as Codec).decompress(stored.subarray(0, read)))
          .catch(() => {
            throw this.verify.failure(chunk, pack, 'its frame cannot be read or decompressed');
          });
        const start = ((slot ?? 0) + skip) * CHUNK_BYTES;
        slice = frame.subarray(start, start + length);
      }
      this.verify.check(chunk, n, slice, pack);
      if (zstd !== undefined) {
        slice.copy(target);
      }
      done += n;
    }
    return out.subarray(0, bytes);
  }

  /**
   * Chunks of many ranges at once, each handed to `sink(first, bytes)` once checked (in no
   * particular order; `bytes` is only valid during the call). Unlike `read` per range, a zstd
   * frame that several ranges use is decompressed once, and up to `parallel` frames are
   * decompressed at a time: the eager pages of a served image are hundreds of short ranges in
   * the same frames (docs/architecture.md, the lazy restore Decision). Packs `openPacks` opened
   * are read on this thread.
   */
  async readRanges(
    ranges: ReadonlyArray<{ first: number; count: number }>,
    sink: (first: number, bytes: Buffer) => void,
    parallel = 16
  ): Promise<void> {
    const frames = new Map<
      string,
      { pack: string; at: number; stored: number; parts: Array<[number, number, number]> }
    >();
    const raw: Array<[number, number]> = [];
    for (const { first, count } of ranges) {
      this.checkRange(first, count);
      for (let run = this.runOf(first), done = 0; done < count; run++) {
        const { pack, at, zstd, slot } = this.list.runs[run];
        const chunk = first + done;
        const skip = chunk - this.starts[run];
        const n = Math.min(this.list.runs[run].count - skip, count - done);
        done += n;
        if (zstd === undefined) {
          raw.push([chunk, n]);
          continue;
        }
        const key = `${pack}:${at}`;
        const frame = frames.get(key) ?? { pack, at, stored: zstd, parts: [] };
        frames.set(key, frame);
        frame.parts.push([chunk, (slot ?? 0) + skip, n]);
      }
    }
    const queue = [...frames.values()];
    const worker = async () => {
      for (let frame = queue.pop(); frame; frame = queue.pop()) {
        const { pack, at, stored, parts } = frame;
        const fd = this.open.get(pack);
        const compressed = Buffer.allocUnsafe(stored);
        const bytes = await (
          fd !== undefined
            ? Promise.resolve(readFullySync(fd, compressed, at))
            : this.packs.get(pack).then(handle => readFully(handle, compressed, at))
        )
          .then(read => (this.codec as Codec).decompress(compressed.subarray(0, read)))
          .catch(() => {
            throw this.verify.failure(
              parts[0][0],
              pack,
              'its frame cannot be read or decompressed'
            );
          });
        for (const [chunk, slot, n] of parts) {
          const slice = bytes.subarray(
            slot * CHUNK_BYTES,
            slot * CHUNK_BYTES + spanBytes(this.list, chunk, n)
          );
          this.verify.check(chunk, n, slice, pack);
          sink(chunk, slice);
        }
      }
    };
    // The raw ones: read on this thread while the pool decompresses, and checked on the hash
    // workers when there are any (the hashes were most of the eager pages' cost, and the other
    // core waits for them: `criu restore` holds until they are in).
    const workers = HashWorkers.shared();
    const readRaw = () =>
      workers ? this.readRawOnWorkers(raw, sink, workers) : this.readRawHere(raw, sink);
    await Promise.all([...Array.from({ length: Math.max(1, parallel) }, worker), readRaw()]);
  }

  /**
   * Raw pieces read and checked on this thread, letting the event loop run every few
   * milliseconds: a read from an opened pack settles at once, so without that the whole set
   * (tens of MiB) ran as one task, and a restore's stop of the running kernel, which polls on a
   * timer, waited for it (80-90 ms at 256 MiB: bench/README.md).
   */
  private async readRawHere(
    raw: ReadonlyArray<[number, number]>,
    sink: (first: number, bytes: Buffer) => void
  ): Promise<void> {
    let since = performance.now();
    for (const [chunk, n] of raw) {
      sink(chunk, await this.read(chunk, n));
      if (performance.now() - since > RAW_SLICE_MS) {
        await new Promise(resolve => setImmediate(resolve));
        since = performance.now();
      }
    }
  }

  /**
   * Raw pieces (each within one run) read on this thread into shared memory, a batch at a time,
   * checked on the hash workers and handed to `sink` once checked: the reads and the sink's
   * writes here, the hashes beside them. A batch the workers cannot take is checked here.
   */
  private async readRawOnWorkers(
    raw: ReadonlyArray<[number, number]>,
    sink: (first: number, bytes: Buffer) => void,
    workers: HashWorkers
  ): Promise<void> {
    const inFlight: Array<Promise<void>> = [];
    for (let next = 0; next < raw.length;) {
      const batch: Array<[number, number]> = [];
      let size = 0;
      for (; next < raw.length; next++) {
        const bytes = spanBytes(this.list, raw[next][0], raw[next][1]);
        if (batch.length > 0 && size + bytes > RAW_BATCH_BYTES) {
          break;
        }
        batch.push(raw[next]);
        size += bytes;
      }
      const shared = Buffer.from(new SharedArrayBuffer(size));
      const runs: HashRun[] = [];
      const slices: Buffer[] = [];
      let offset = 0;
      for (const [chunk, n] of batch) {
        const slice = shared.subarray(offset, offset + spanBytes(this.list, chunk, n));
        await this.readRawRun(chunk, n, slice);
        runs.push({
          offset,
          first: chunk,
          count: n,
          lastLength: slice.length - (n - 1) * CHUNK_BYTES
        });
        slices.push(slice);
        offset += slice.length;
      }
      const checked = workers
        .check(shared, runs, hashesOf(this.list, runs))
        .catch(() => null)
        .then(bad => {
          if (bad === null) {
            runs.forEach((run, k) =>
              this.verify.check(run.first, run.count, slices[k], this.packOf(run.first))
            );
          } else if (bad >= 0) {
            throw this.verify.failure(bad, this.packOf(bad), 'its bytes do not match its hash');
          }
          runs.forEach((run, k) => sink(run.first, slices[k]));
        });
      // Awaited below; a failure meanwhile is not an unhandled rejection.
      checked.catch(() => undefined);
      inFlight.push(checked);
      if (inFlight.length >= RAW_BATCHES_AT_ONCE) {
        await inFlight.shift();
      }
    }
    await Promise.all(inFlight);
  }

  /** Raw chunks [first, first + count), all in one run, into `into`, unchecked. */
  private async readRawRun(first: number, count: number, into: Buffer): Promise<void> {
    const run = this.runOf(first);
    const { pack, at } = this.list.runs[run];
    const position = at + (first - this.starts[run]) * CHUNK_BYTES;
    const handle =
      this.open.get(pack) ??
      (await this.packs.get(pack).catch(() => {
        throw this.verify.failure(first, pack, 'its pack is missing');
      }));
    let filled: number;
    try {
      filled =
        typeof handle === 'number'
          ? readFullySync(handle, into, position)
          : await readFully(handle, into, position);
    } catch {
      throw this.verify.failure(first, pack, 'its pack cannot be read');
    }
    if (filled < into.length) {
      throw this.verify.failure(first, pack, 'its pack is too short');
    }
  }

  /** The pack holding chunk `chunk`. */
  private packOf(chunk: number): string {
    return this.list.runs[this.runOf(chunk)].pack;
  }

  /**
   * Opens every pack of the list now, so that `readSync` can read them; a missing pack is
   * ChunkCorruptError naming its first chunk.
   */
  async openPacks(): Promise<void> {
    for (let run = 0; run < this.list.runs.length; run++) {
      const { pack } = this.list.runs[run];
      if (!this.open.has(pack)) {
        const handle = await this.packs.get(pack).catch(() => {
          throw this.verify.failure(this.starts[run], pack, 'its pack is missing');
        });
        this.open.set(pack, handle.fd);
      }
    }
  }

  private readonly open = new Map<string, number>();

  /**
   * What `read` gives, read and checked on this thread (`pread` from the page cache: no round
   * trip through libuv's pool, which on a busy machine costs more than the read), or false when
   * the range holds compressed chunks (decompressed on the pool: use `read`) or a pack
   * `openPacks` has not opened.
   */
  readSync(first: number, count: number, into: Buffer): boolean {
    this.checkRange(first, count);
    let run = this.runOf(first);
    for (let done = 0; done < count; run++) {
      const { pack, at, zstd } = this.list.runs[run];
      const fd = this.open.get(pack);
      if (zstd !== undefined || fd === undefined) {
        return false;
      }
      const chunk = first + done;
      const skip = chunk - this.starts[run];
      const n = Math.min(this.list.runs[run].count - skip, count - done);
      const length = spanBytes(this.list, chunk, n);
      const slice = into.subarray(done * CHUNK_BYTES, done * CHUNK_BYTES + length);
      let filled: number;
      try {
        filled = readFullySync(fd, slice, at + skip * CHUNK_BYTES);
      } catch {
        throw this.verify.failure(chunk, pack, 'its pack cannot be read');
      }
      this.verify.check(chunk, n, slice.subarray(0, filled), pack);
      done += n;
    }
    return true;
  }

  private checkRange(first: number, count: number): void {
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0) {
      throw new RangeError(`chunks ${first} + ${count} are not a range of chunks`);
    }
    if (first + count > this.chunks) {
      throw new RangeError(`chunks ${first} + ${count} go past the file's ${this.chunks}`);
    }
  }

  /** The run holding chunk `chunk`: the last that starts at or before it. */
  private runOf(chunk: number): number {
    let low = 0;
    let high = this.starts.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (this.starts[middle] <= chunk) {
        low = middle;
      } else {
        high = middle - 1;
      }
    }
    return low;
  }

  /** Closes the packs it opened. */
  close(): Promise<void> {
    this.open.clear();
    return this.packs.close();
  }
}

/** How far into the past a new pack's mtime is set (see `IngestSession.finish`). */
const SEALED_MTIME_AGE_MS = 1000;

/** A pack's identity as the file system keeps it: any write changes its mtime to now. */
async function packIdentity(file: string): Promise<string> {
  const stat = await fs.stat(file, { bigint: true });
  return `${stat.size}:${stat.ino}:${stat.mtimeNs}`;
}

/** Whether the process with this pid is alive (a dead writer's files are garbage). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const PACK_NAME = /^[0-9a-z]+-[0-9a-f]{12}$/;

export class ChunkStore {
  /** hash (its 16 bytes as a latin1 string) -> where the chunk is, for every pack read so far. */
  private readonly index = new Map<string, Location>();
  private readonly indexedPacks = new Set<string>();
  /**
   * Packs found gone: their entries stay in the index (removing them would walk all of it) but
   * never match; a chunk that was only there is written again.
   */
  private readonly gonePacks = new Set<string>();

  /** `codec` reads compressed chunks, and compresses new ones unless `compressNew` is false. */
  constructor(
    readonly root: string,
    readonly codec: Codec | null = null,
    readonly compressNew = true
  ) {}

  private get packsDir(): string {
    return path.join(this.root, 'packs');
  }
  private get writersDir(): string {
    return path.join(this.root, 'writers');
  }
  private get doomedDir(): string {
    return path.join(this.root, 'doomed');
  }
  private get sealedDir(): string {
    return path.join(this.root, 'sealed');
  }

  packPath(name: string): string {
    return path.join(this.packsDir, `${name}.pack`);
  }

  async ensure(): Promise<void> {
    for (const dir of [this.root, this.packsDir, this.writersDir, this.doomedDir, this.sealedDir]) {
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    }
  }

  /** The committed packs, by name. */
  async packs(): Promise<string[]> {
    const names = await fs.readdir(this.packsDir).catch(() => [] as string[]);
    return names
      .filter(name => name.endsWith('.pack') && !name.startsWith('.'))
      .map(name => name.slice(0, -'.pack'.length))
      .filter(name => PACK_NAME.test(name));
  }

  /** Reads the index of every pack not read yet, and forgets packs that are gone. */
  private async refreshIndex(): Promise<void> {
    const present = new Set(await this.packs());
    for (const name of this.indexedPacks) {
      if (!present.has(name)) {
        this.forgetPack(name);
      }
    }
    for (const name of present) {
      if (this.indexedPacks.has(name)) {
        continue;
      }
      const entries = await readPackIndex(this.packPath(name)).catch(() => null);
      // A pack whose index cannot be read is not used for new lists (its chunks are written
      // again); the lists that use it still read it through their own locations.
      if (!entries) {
        continue;
      }
      this.addPack(name, entries);
    }
  }

  private forgetPack(name: string): void {
    this.indexedPacks.delete(name);
    this.gonePacks.add(name);
  }

  /**
   * Starts an ingest: its chunk lists may be used once `finish` has returned. The caller must
   * record the lists (commit its image) before calling `close`, which ends its claim on packs.
   */
  async begin(options: { durable?: boolean } = {}): Promise<IngestSession> {
    await this.ensure();
    await this.refreshIndex();
    const refsFile = path.join(
      this.writersDir,
      `${process.pid}-${randomBytes(4).toString('hex')}.refs`
    );
    const refs = await fs.open(refsFile, 'wx', 0o600);
    return new IngestSession(this, refsFile, refs, options.durable ?? true);
  }

  /** @internal Where an existing chunk is, or null. */
  lookup(key: string): Location | null {
    const location = this.index.get(key);
    return location && !this.gonePacks.has(location.pack) ? location : null;
  }

  /** @internal Drops a pack found missing while ingesting. */
  dropPack(name: string): void {
    this.forgetPack(name);
  }

  /** @internal Adds a pack just written. */
  addPack(name: string, entries: IndexEntry[]): void {
    // A pack given back by a collection is read again.
    this.gonePacks.delete(name);
    for (const entry of entries) {
      this.index.set(entry.hash.toString('latin1'), locationOf(name, entry));
    }
    this.indexedPacks.add(name);
  }

  /**
   * @internal Records the identity of pack `name`, just renamed into place whole (its mtime was
   * set into the past first: see `IngestSession.finish`).
   */
  async sealPack(name: string): Promise<void> {
    const identity = await packIdentity(this.packPath(name));
    await fs.mkdir(this.sealedDir, { recursive: true, mode: 0o700 });
    // A torn or stale record only fails to match: the pack is then read and checked.
    await fs.writeFile(path.join(this.sealedDir, name), identity, { mode: 0o600 });
  }

  /**
   * The packs among `names` unchanged since they were written (same size, inode and mtime as
   * recorded then): what a restore may trust without reading them first, as a whole image's
   * file unchanged since its seal. A pack without a record (written before records were kept,
   * or fetched from object storage), or changed since, is not among them.
   */
  async unchangedPacks(names: Iterable<string>): Promise<Set<string>> {
    const unchanged = new Set<string>();
    for (const name of new Set(names)) {
      if (!PACK_NAME.test(name)) {
        continue;
      }
      const recorded = await fs.readFile(path.join(this.sealedDir, name), 'utf8').catch(() => null);
      if (recorded === null) {
        continue;
      }
      const now = await packIdentity(this.packPath(name)).catch(() =>
        packIdentity(path.join(this.doomedDir, `${name}.pack`)).catch(() => null)
      );
      if (now === recorded) {
        unchanged.add(name);
      }
    }
    return unchanged;
  }

  /** Opens a pack for reading: in packs/, or in doomed/ while a collection was interrupted. */
  private async openPack(name: string): Promise<fs.FileHandle> {
    try {
      return await fs.open(this.packPath(name), 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw error;
      }
      return fs.open(path.join(this.doomedDir, `${name}.pack`), 'r');
    }
  }

  /**
   * Writes the file a list describes to `dest` (0600), checking every chunk against its hash
   * before its bytes are used: a mismatch or a missing pack throws ChunkCorruptError naming the
   * chunk, and `dest` is removed.
   *
   * An image after many checkpoints is tens of thousands of short runs over as many packs as
   * checkpoints, but the runs of one pack come in the order the pack was written: the reads are
   * planned first (`planReads`), so that each pack is read in large sequential pieces shared by
   * every run in them, on libuv's pool ahead of their use, while hash workers (hash-workers.ts)
   * check each segment's chunks as soon as it is read and the writes of earlier pieces run; a
   * piece is written only once its chunks have matched (bench/README.md, "Rebuilding a chunk
   * image's files", "Full restores of chunk images beside whole ones").
   */
  async materialize(list: ChunkList, dest: string): Promise<void> {
    this.requireCodec(list);
    const verify = await chunkVerifier(list);
    const { segments, pieces } = planReads(list);
    const packs = new PackHandles(name => this.openPack(name));
    const out = await fs.open(dest, 'w', 0o600);
    const io = new InFlight();
    const workers = HashWorkers.shared();
    const pool = new BlockPool(workers !== null);
    const data: Array<Promise<Buffer | string> | undefined> = [];
    const checked = workers ? segmentChecks(list, segments, pieces, workers, verify) : null;
    let nextSegment = 0;
    let readAhead = 0;
    /** Starts the reads of every segment up to `needed`, and more while few bytes are ahead. */
    const startReads = (needed: number) => {
      for (
        ;
        nextSegment < segments.length && (nextSegment <= needed || readAhead < READ_AHEAD_BYTES);
        nextSegment++
      ) {
        const segment = segments[nextSegment];
        readAhead += segment.end - segment.start;
        const read = io.track(readSegment(packs, segment, pool));
        data[nextSegment] = read;
        checked?.start(nextSegment, read, io);
      }
    };
    const frames = new Map<number, Promise<Buffer | string>>();
    /** The decompressed frame of piece `at`, started a few pieces ahead of its use. */
    const frameOf = (at: number) => {
      const piece = pieces[at];
      const key = piece.segment * 2 ** 32 + piece.offset;
      let frame = frames.get(key);
      if (!frame) {
        startReads(piece.segment);
        frame = io.track(
          (data[piece.segment] as Promise<Buffer | string>).then(bytes =>
            typeof bytes === 'string'
              ? bytes
              : (this.codec as Codec)
                  .decompress(bytes.subarray(piece.offset, piece.offset + piece.stored))
                  .catch(() => 'its frame cannot be read or decompressed')
          )
        );
        frames.set(key, frame);
        if (frames.size > 4 * FRAMES_AHEAD) {
          frames.delete(frames.keys().next().value as number);
        }
      }
      return frame;
    };
    const writer = new BlockWriter(out, io, pool);
    try {
      for (let at = 0, ahead = 0; at < pieces.length; at++) {
        const piece = pieces[at];
        for (
          ahead = Math.max(ahead, at);
          ahead < Math.min(at + FRAMES_AHEAD, pieces.length);
          ahead++
        ) {
          if (pieces[ahead].zstd) {
            void frameOf(ahead);
          }
        }
        startReads(piece.segment);
        const bytes = await (piece.zstd
          ? frameOf(at)
          : (data[piece.segment] as Promise<Buffer | string>));
        if (typeof bytes === 'string') {
          throw verify.failure(piece.first, segments[piece.segment].pack, bytes);
        }
        const start = piece.zstd ? piece.slot * CHUNK_BYTES : piece.offset;
        const slice = bytes.subarray(start, start + piece.bytes);
        // A raw piece's segment is checked whole on the workers once read; what they could not
        // check (a short read, a worker gone) is checked here.
        if (piece.zstd || !(await checked?.done(piece.segment))) {
          verify.check(piece.first, piece.count, slice, segments[piece.segment].pack);
        }
        const { written } = await writer.write(slice, piece.first * CHUNK_BYTES);
        const segment = segments[piece.segment];
        if (!piece.zstd) {
          segment.writes.push(written);
        }
        if (segment.lastPiece === at) {
          readAhead -= segment.end - segment.start;
          // Once every piece of it is out (its frames were decompressed before): used again.
          const read = data[piece.segment];
          void Promise.allSettled(segment.writes).then(() =>
            read?.then(done => typeof done !== 'string' && pool.give(done))
          );
          data[piece.segment] = undefined;
        }
      }
      await writer.end();
    } catch (error) {
      await io.settled();
      await out.close().catch(() => undefined);
      await fs.rm(dest, { force: true });
      throw error;
    } finally {
      await io.settled();
      await packs.close();
    }
    await out.close();
  }

  /**
   * Writes small files (a chunk image has dozens of a few KiB each beside its pages) as
   * `materialize` does, every chunk checked, but with one set of open packs and the reads and
   * writes on this thread: `materialize`'s planned reads on libuv's pool cost a few round trips
   * per file, ~70-110 ms for the 27 files of a kernel's image on the busy machine.
   */
  async materializeSmall(files: Array<{ list: ChunkList; dest: string }>): Promise<void> {
    const packs = new PackHandles(name => this.openPack(name));
    try {
      await Promise.all(
        files.map(async ({ list, dest }) => {
          this.requireCodec(list);
          const reader = new ChunkListReader(list, await chunkVerifier(list), packs, this.codec);
          await reader.openPacks();
          const bytes = Buffer.allocUnsafe(list.bytes);
          if (!reader.readSync(0, reader.chunks, bytes)) {
            await reader.read(0, reader.chunks, bytes);
          }
          writeFileSync(dest, bytes, { mode: 0o600 });
        })
      );
    } finally {
      await packs.close();
    }
  }

  /**
   * A reader of one list's chunks by position, for a reader that wants pages rather than a file
   * (a page server): `read(first, count)` gives chunks [first, first + count) of the file, every
   * one checked against its hash. Close it when done (it keeps its packs open).
   */
  async reader(list: ChunkList): Promise<ChunkListReader> {
    this.requireCodec(list);
    return new ChunkListReader(
      list,
      await chunkVerifier(list),
      new PackHandles(name => this.openPack(name)),
      this.codec
    );
  }

  private requireCodec(list: ChunkList): void {
    if (!this.codec && list.runs.some(run => run.zstd !== undefined)) {
      throw new Error('This image has compressed chunks, and the chunk store has no codec.');
    }
  }

  /**
   * Mark-and-sweep over packs. `live` returns every list in use (committed images and partial
   * ones the caller knows of); it is called twice, and must read the records afresh each time.
   */
  async gc(live: () => Promise<Iterable<ChunkList>>): Promise<GcReport> {
    await this.ensure();
    const lock = path.join(this.root, 'gc.lock');
    if (!(await takeLock(lock))) {
      return { packsRemoved: 0, bytesFreed: 0 };
    }
    try {
      // A collection killed half-way left packs in doomed/: give them back first.
      for (const name of await fs.readdir(this.doomedDir)) {
        await fs
          .rename(path.join(this.doomedDir, name), path.join(this.packsDir, name))
          .catch(() => undefined);
      }
      await this.removeDeadWriters();
      // The fence: packs written from here on are not candidates.
      const candidates = await this.packs();
      const marked = new Set([...(await this.writerRefs()), ...packsOf(await live())]);
      const doomed = candidates.filter(name => !marked.has(name));
      const moved: string[] = [];
      for (const name of doomed) {
        const ok = await fs
          .rename(this.packPath(name), path.join(this.doomedDir, `${name}.pack`))
          .then(
            () => true,
            () => false
          );
        if (ok) {
          moved.push(name);
        }
      }
      // An ingest that took one of them after the first mark named it in its refs file before
      // relying on it, and if it has ended since, its image is committed: mark again.
      const remarked = new Set([...(await this.writerRefs()), ...packsOf(await live())]);
      let bytesFreed = 0;
      let packsRemoved = 0;
      for (const name of moved) {
        const doomedPath = path.join(this.doomedDir, `${name}.pack`);
        if (remarked.has(name)) {
          await fs.rename(doomedPath, this.packPath(name));
          continue;
        }
        const size = (await fs.stat(doomedPath)).size;
        await fs.rm(doomedPath, { force: true });
        await fs.rm(path.join(this.sealedDir, name), { force: true });
        bytesFreed += size;
        packsRemoved++;
        this.forgetPack(name);
      }
      return { packsRemoved, bytesFreed };
    } finally {
      await fs.rm(lock, { force: true });
    }
  }

  /** Removes the refs files and temporary packs of ingests whose process is gone. */
  private async removeDeadWriters(): Promise<void> {
    for (const name of await fs.readdir(this.writersDir)) {
      const pid = Number(name.split('-')[0]);
      if (Number.isInteger(pid) && !processAlive(pid)) {
        await fs.rm(path.join(this.writersDir, name), { force: true });
      }
    }
    for (const name of await fs.readdir(this.packsDir)) {
      const match = /^\.tmp-(\d+)-/.exec(name);
      if (match && !processAlive(Number(match[1]))) {
        await fs.rm(path.join(this.packsDir, name), { force: true });
      }
    }
    // Records of packs a killed collection deleted (a record is written after its pack is in
    // place, so a record without its pack is never a pack still being written).
    for (const name of await fs.readdir(this.sealedDir)) {
      const packs = [this.packPath(name), path.join(this.doomedDir, `${name}.pack`)];
      if (!(await exists(packs[0])) && !(await exists(packs[1]))) {
        await fs.rm(path.join(this.sealedDir, name), { force: true });
      }
    }
  }

  /** Every pack named by an ingest in progress. */
  private async writerRefs(): Promise<string[]> {
    const names: string[] = [];
    for (const file of await fs.readdir(this.writersDir)) {
      const text = await fs.readFile(path.join(this.writersDir, file), 'utf8').catch(() => '');
      names.push(...text.split('\n').filter(Boolean));
    }
    return names;
  }

  /** A `du`-style report: bytes on disk, and per image what it uses and what deleting it frees. */
  async usage(images: Record<string, ChunkList[]>): Promise<StoreUsage> {
    const packSizes = new Map<string, number>();
    for (const name of await this.packs()) {
      packSizes.set(name, (await fs.stat(this.packPath(name))).size);
    }
    // For each stored chunk (pack + offset), the images that use it.
    const users = new Map<string, { stored: number; images: Set<string> }>();
    const packUsers = new Map<string, Set<string>>();
    for (const [id, lists] of Object.entries(images)) {
      for (const list of lists) {
        for (const ref of chunkRefs(list)) {
          const key = `${ref.pack}:${ref.at}`;
          let entry = users.get(key);
          if (!entry) {
            entry = { stored: ref.stored, images: new Set() };
            users.set(key, entry);
          }
          entry.images.add(id);
        }
        for (const run of list.runs) {
          let set = packUsers.get(run.pack);
          if (!set) {
            set = new Set();
            packUsers.set(run.pack, set);
          }
          set.add(id);
        }
      }
    }
    const result: Record<string, ImageUsage> = {};
    for (const [id, lists] of Object.entries(images)) {
      result[id] = {
        bytes: lists.reduce((sum, list) => sum + list.bytes, 0),
        storedBytes: 0,
        exclusiveBytes: 0,
        freedBytes: 0
      };
    }
    for (const entry of users.values()) {
      for (const id of entry.images) {
        result[id].storedBytes += entry.stored;
        if (entry.images.size === 1) {
          result[id].exclusiveBytes += entry.stored;
        }
      }
    }
    let garbageBytes = 0;
    for (const [name, size] of packSizes) {
      const set = packUsers.get(name);
      if (!set) {
        garbageBytes += size;
      } else if (set.size === 1) {
        result[[...set][0]].freedBytes += size;
      }
    }
    const totalBytes = [...packSizes.values()].reduce((sum, size) => sum + size, 0);
    return { totalBytes, garbageBytes, images: result };
  }
}

/** Consecutive new chunks cut into one frame: raw, and compressed when that is worth it. */
interface CutFrame {
  items: Array<{ hash: Buffer; key: string; length: number }>;
  raw: Buffer;
  frame: Buffer | null;
}

/** A pack an ingest writes: its temporary file, its bytes so far, the index of its chunks. */
class PackBuilder {
  readonly name = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
  readonly temp: string;
  out: fs.FileHandle | null = null;
  /** Bytes of the pack so far (its magic comes first, written when it is opened). */
  written = PACK_MAGIC.length;
  readonly entries: IndexEntry[] = [];

  constructor(private readonly store: ChunkStore) {
    this.temp = path.join(
      path.dirname(store.packPath(this.name)),
      `.tmp-${process.pid}-${this.name}.pack`
    );
  }

  async write(data: Buffer, length: number): Promise<void> {
    if (!this.out) {
      this.out = await fs.open(this.temp, 'wx', 0o600);
      await this.out.write(PACK_MAGIC);
    }
    await this.out.write(data, 0, length);
  }

  /** Bytes of the pack once finished: its new bytes. */
  get bytes(): number {
    return this.written + this.entries.length * INDEX_ENTRY_BYTES + TRAILER_BYTES;
  }

  /** Writes the index and trailer and renames the pack into place (flushed first if durable). */
  async finish(durable: boolean): Promise<void> {
    const out = this.out as fs.FileHandle;
    const index = Buffer.alloc(this.entries.length * INDEX_ENTRY_BYTES);
    this.entries.forEach((entry, i) => {
      const base = i * INDEX_ENTRY_BYTES;
      entry.hash.copy(index, base);
      index.writeBigUInt64LE(BigInt(entry.at), base + HASH_BYTES);
      index.writeUInt32LE(entry.stored, base + HASH_BYTES + 8);
      index.writeUInt32LE(entry.length, base + HASH_BYTES + 12);
      index.writeUInt32LE(entry.frameSlot, base + HASH_BYTES + 16);
    });
    const trailer = Buffer.alloc(TRAILER_BYTES);
    PACK_MAGIC.copy(trailer, 0);
    trailer.writeBigUInt64LE(BigInt(this.written), 8);
    trailer.writeUInt32LE(this.entries.length, 16);
    await out.write(index);
    await out.write(trailer);
    // An mtime in the past, which no later write gives it: a write within the same tick of the
    // file system's coarse clock still changes the identity `sealPack` records.
    const past = new Date(Date.now() - SEALED_MTIME_AGE_MS);
    await out.utimes(past, past);
    if (durable) {
      await out.sync();
    }
    await out.close();
    this.out = null;
    await fs.rename(this.temp, this.store.packPath(this.name));
    if (durable) {
      await fsyncPath(path.dirname(this.temp));
    }
    await this.store.sealPack(this.name);
    this.store.addPack(
      this.name,
      this.entries.filter(entry => entry.length === CHUNK_BYTES)
    );
  }

  async abandon(): Promise<void> {
    await this.out?.close().catch(() => undefined);
    this.out = null;
    await fs.rm(this.temp, { force: true });
  }
}

/**
 * One ingest: the files of an image cut into chunks, the new ones written into packs (one for
 * short runs of new chunks, and one for each long run: LONG_RUN_CHUNKS).
 */
export class IngestSession {
  /** The pack of short runs, and every pack written so far, in order. */
  private readonly shortRuns: PackBuilder;
  private readonly packs: PackBuilder[] = [];
  /** Chunks written by this session, not yet in the store's index. */
  private readonly fresh = new Map<string, Location>();
  private readonly claimed = new Set<string>();
  private finished = false;

  constructor(
    private readonly store: ChunkStore,
    private readonly refsFile: string,
    private readonly refs: fs.FileHandle,
    private readonly durable: boolean
  ) {
    this.shortRuns = this.newPack();
  }

  private newPack(): PackBuilder {
    const pack = new PackBuilder(this.store);
    this.packs.push(pack);
    return pack;
  }

  /** Names a pack in the refs file before the session relies on it (see ChunkStore.gc). */
  private async claim(pack: string): Promise<void> {
    if (!this.claimed.has(pack)) {
      this.claimed.add(pack);
      await this.refs.write(`${pack}\n`);
    }
  }

  /**
   * Cuts a file into chunks; chunks the store lacks are appended to this session's pack.
   * `pause`, awaited between two 4 MiB blocks, lets background work give way (BackgroundPause).
   * New chunks in `keepRaw` (chunk ranges, in file order) are stored uncompressed, in frames of
   * their own: a lazy restore copies them before the kernel runs (a CRIU image's eager pages,
   * `eagerChunkRanges`), and decompressing them there was most of what it added to a whole
   * image's restore (bench/README.md, "Eager pages stored raw").
   */
  async ingest(
    file: string,
    pause?: () => Promise<void>,
    keepRaw: ReadonlyArray<{ first: number; count: number }> = []
  ): Promise<ChunkList> {
    if (this.finished) {
      throw new Error('this ingest has finished');
    }
    const digest = await hasher();
    const input = await fs.open(file, 'r');
    // Image files do not change while they are ingested; a file that grows is an error below.
    const expected = chunkCount((await input.stat()).size);
    const hashes = Buffer.alloc(expected * HASH_BYTES);
    let chunks = 0;
    const runs: ChunkRun[] = [];
    let bytes = 0;
    const block = Buffer.allocUnsafe(BLOCK_BYTES);
    // Bytes for the end of pack `pendingFor`, written in blocks.
    const pending = Buffer.allocUnsafe(BLOCK_BYTES);
    let pendingBytes = 0;
    let pendingFor = this.shortRuns;
    const flush = async () => {
      if (pendingBytes > 0) {
        await pendingFor.write(pending, pendingBytes);
        pendingBytes = 0;
      }
    };
    // The run of new chunks under way: how many are stored, and its own pack once it is long.
    let runStored = 0;
    let longRun: PackBuilder | null = null;
    // The last frame of a long run so far, placed once the next shows whether the run goes on.
    let held: CutFrame | null = null;
    const append = (location: Location, length: number) => {
      const last = runs[runs.length - 1];
      // Raw: the next bytes of the pack (every earlier chunk of a run is whole). In a frame: the
      // next slot of the same frame.
      const follows =
        last?.pack === location.pack &&
        (location.zstd === undefined
          ? last.zstd === undefined && last.at + last.count * CHUNK_BYTES === location.at
          : last.zstd === location.zstd &&
            last.at === location.at &&
            (last.slot ?? 0) + last.count === location.slot);
      if (follows) {
        last.count++;
      } else {
        runs.push({ ...location, count: 1 });
      }
      bytes += length;
    };
    // New chunks not stored yet: consecutive in the file, in `block`, at most FRAME_CHUNKS,
    // all of them to be kept raw (`keepRaw`) or none.
    let waiting: Array<{ hash: Buffer; key: string; chunk: Buffer }> = [];
    let waitingRaw = false;
    const rawRanges = [...keepRaw].sort((a, b) => a.first - b.first);
    let rawAt = 0;
    /** Whether chunk `index` is to be kept raw; asked in increasing order. */
    const keptRaw = (index: number) => {
      while (rawAt < rawRanges.length && rawRanges[rawAt].first + rawRanges[rawAt].count <= index) {
        rawAt++;
      }
      return rawAt < rawRanges.length && rawRanges[rawAt].first <= index;
    };
    const place = async (cut: CutFrame, pack: PackBuilder) => {
      await this.claim(pack.name);
      const { items, raw, frame } = cut;
      const at = pack.written;
      items.forEach((item, k) => {
        const location: Location = frame
          ? { pack: pack.name, at, zstd: frame.length, slot: k }
          : { pack: pack.name, at: at + k * CHUNK_BYTES };
        pack.entries.push({
          hash: item.hash,
          at: location.at,
          stored: frame ? frame.length : item.length,
          length: item.length,
          frameSlot: frame ? k + 1 : 0
        });
        if (item.length === CHUNK_BYTES) {
          // A short chunk is never reused at another position: only whole chunks are shared.
          this.fresh.set(item.key, location);
        }
        append(location, item.length);
      });
      const data = frame ?? raw;
      if (pendingFor !== pack || pendingBytes + data.length > pending.length) {
        await flush();
        pendingFor = pack;
      }
      data.copy(pending, pendingBytes);
      pendingBytes += data.length;
      pack.written += data.length;
    };
    // Where a frame goes. A long run's own pack takes only frames like the ones that made it
    // long (not worth compressing: an array's numbers) and only those the run goes on after:
    // the pages right after an array (the interpreter's, which compress) are often used by later
    // images, and one chunk of them in the array's pack kept all of it (seen in CI).
    const storeWaiting = async () => {
      if (waiting.length === 0) {
        return;
      }
      const raw = Buffer.concat(waiting.map(w => w.chunk));
      let frame: Buffer | null = null;
      if (this.store.codec && this.store.compressNew && !waitingRaw) {
        const compressed = await this.store.codec.compress(raw);
        frame = compressed.length <= raw.length * (1 - WORTH_COMPRESSING) ? compressed : null;
      }
      const cut: CutFrame = {
        items: waiting.map(w => ({ hash: w.hash, key: w.key, length: w.chunk.length })),
        raw,
        frame
      };
      // Kept raw by choice, not because zstd could not shrink it: no array's.
      const likeAnArray = frame === null && !waitingRaw;
      if (held) {
        await place(held, likeAnArray ? (longRun ??= this.newPack()) : this.shortRuns);
        held = null;
      }
      if (likeAnArray && runStored >= LONG_RUN_CHUNKS) {
        held = cut;
      } else {
        await place(cut, this.shortRuns);
      }
      runStored = likeAnArray ? runStored + cut.items.length : 0;
      if (!likeAnArray) {
        longRun = null;
      }
      waiting = [];
    };
    const endRun = async () => {
      if (held) {
        await place(held, this.shortRuns);
        held = null;
      }
      runStored = 0;
      longRun = null;
    };
    try {
      for (;;) {
        // Where the next block starts: `bytes` counts the chunks placed, and a held frame is not.
        const bytesRead = await readFully(input, block, chunks * CHUNK_BYTES);
        if (bytesRead === 0) {
          break;
        }
        for (let start = 0; start < bytesRead; start += CHUNK_BYTES) {
          const chunk = block.subarray(start, Math.min(start + CHUNK_BYTES, bytesRead));
          if (chunks === expected) {
            throw new Error(`${file} grew while it was being ingested`);
          }
          hashes.set(digest(chunk), chunks * HASH_BYTES);
          const hash = hashes.subarray(chunks * HASH_BYTES, ++chunks * HASH_BYTES);
          const key = hash.toString('latin1');
          let location = this.fresh.get(key) ?? this.store.lookup(key);
          if (location && !this.claimed.has(location.pack)) {
            await this.claim(location.pack);
            // Claimed first, then checked: a collection that doomed it since is seen here.
            if (!(await exists(this.store.packPath(location.pack)))) {
              this.store.dropPack(location.pack);
              location = null;
            }
          }
          if (!location) {
            const raw = keptRaw(chunks - 1);
            if (raw !== waitingRaw) {
              await storeWaiting();
              waitingRaw = raw;
            }
            waiting.push({ hash, key, chunk });
            if (waiting.length === FRAME_CHUNKS) {
              await storeWaiting();
            }
            continue;
          }
          // The chunks before it in the file go first; the run of new chunks ends there.
          await storeWaiting();
          await endRun();
          append(location, chunk.length);
        }
        // `block` is read into again next: what waits in it is stored now.
        await storeWaiting();
        if (bytesRead < BLOCK_BYTES) {
          break;
        }
        await pause?.();
      }
      await endRun();
      await flush();
    } finally {
      await input.close();
    }
    if (chunks !== expected) {
      throw new Error(`${file} shrank while it was being ingested`);
    }
    return { bytes, hashes, runs };
  }

  /**
   * Writes the packs' indexes and renames them into place (flushed first when durable). The
   * lists returned by `ingest` are valid from here on.
   */
  async finish(): Promise<void> {
    if (this.finished) {
      return;
    }
    this.finished = true;
    for (const pack of this.packs.filter(p => p.entries.length > 0)) {
      await pack.finish(this.durable);
    }
  }

  /** Bytes of this session's packs once finished (0 when every chunk was in the store): its new bytes. */
  get packBytes(): number {
    return this.finished
      ? this.packs.filter(p => p.entries.length > 0).reduce((sum, p) => sum + p.bytes, 0)
      : 0;
  }

  /** Ends the session's claim on packs (after its lists are recorded), or abandons it. */
  async close(): Promise<void> {
    this.finished = true;
    for (const pack of this.packs) {
      await pack.abandon();
    }
    await this.refs.close().catch(() => undefined);
    await fs.rm(this.refsFile, { force: true });
  }
}

/** The index of a pack: every chunk's hash and offset. Throws when the pack is malformed. */
export async function readPackIndex(file: string): Promise<IndexEntry[]> {
  const handle = await fs.open(file, 'r');
  try {
    const size = (await handle.stat()).size;
    const trailer = Buffer.alloc(TRAILER_BYTES);
    await handle.read(trailer, 0, TRAILER_BYTES, size - TRAILER_BYTES);
    if (!trailer.subarray(0, 8).equals(PACK_MAGIC)) {
      throw new Error(`${file} is not a pack`);
    }
    const indexAt = Number(trailer.readBigUInt64LE(8));
    const count = trailer.readUInt32LE(16);
    if (indexAt + count * INDEX_ENTRY_BYTES + TRAILER_BYTES !== size) {
      throw new Error(`${file} has a damaged index`);
    }
    const index = Buffer.alloc(count * INDEX_ENTRY_BYTES);
    await handle.read(index, 0, index.length, indexAt);
    const entries = [];
    for (let i = 0; i < count; i++) {
      const base = i * INDEX_ENTRY_BYTES;
      entries.push({
        hash: Buffer.from(index.subarray(base, base + HASH_BYTES)),
        at: Number(index.readBigUInt64LE(base + HASH_BYTES)),
        stored: index.readUInt32LE(base + HASH_BYTES + 8),
        length: index.readUInt32LE(base + HASH_BYTES + 12),
        frameSlot: index.readUInt32LE(base + HASH_BYTES + 16)
      });
    }
    // Only whole chunks are shared with other lists.
    return entries.filter(entry => entry.length === CHUNK_BYTES);
  } finally {
    await handle.close();
  }
}

/** Whether chunk `hash` (16 bytes) is one of the list's chunks. */
export function listUsesChunk(list: ChunkList, hash: Buffer): boolean {
  for (let at = 0; at < list.hashes.length; at += HASH_BYTES) {
    if (list.hashes.compare(hash, 0, HASH_BYTES, at, at + HASH_BYTES) === 0) {
      return true;
    }
  }
  return false;
}

function* packsOf(lists: Iterable<ChunkList>): Generator<string> {
  for (const list of lists) {
    for (const run of list.runs) {
      yield run.pack;
    }
  }
}

/** Reads a block at `position`, short only at the end of the file (chunks stay whole). */
/** Reads `block` from `position` of `fd` on this thread, short only at the file's end. */
function readFullySync(fd: number, block: Buffer, position: number): number {
  let filled = 0;
  for (let read = -1; filled < block.length && read !== 0; filled += read) {
    read = readSync(fd, block, filled, block.length - filled, position + filled);
  }
  return filled;
}

async function readFully(handle: fs.FileHandle, block: Buffer, position: number): Promise<number> {
  let filled = 0;
  while (filled < block.length) {
    const { bytesRead } = await handle.read(
      block,
      filled,
      block.length - filled,
      position + filled
    );
    if (bytesRead === 0) {
      break;
    }
    filled += bytesRead;
  }
  return filled;
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false
  );
}

/** Flushes a file or a folder (its entries) to disk. */
export async function fsyncPath(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Takes a lock file holding our pid; a lock whose process is gone is taken over. */
export async function takeLock(file: string): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await fs.open(file, 'wx', 0o600);
      await handle.write(String(process.pid));
      await handle.close();
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw error;
      }
      const holder = Number(await fs.readFile(file, 'utf8').catch(() => ''));
      if (holder && processAlive(holder)) {
        return false;
      }
      await fs.rm(file, { force: true });
    }
  }
  return false;
}

/** Writes chunk lists to one file: a JSON header (bytes and runs), then every list's hashes. */
export function encodeChunkLists(lists: Record<string, ChunkList>): Buffer {
  const header = Object.fromEntries(
    Object.entries(lists).map(([name, list]) => [name, { bytes: list.bytes, runs: list.runs }])
  );
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(4);
  length.writeUInt32LE(json.length);
  return Buffer.concat([length, json, ...Object.values(lists).map(list => list.hashes)]);
}

export function decodeChunkLists(data: Buffer): Record<string, ChunkList> {
  const jsonBytes = data.readUInt32LE(0);
  const header = JSON.parse(data.toString('utf8', 4, 4 + jsonBytes)) as Record<
    string,
    { bytes: number; runs: ChunkRun[] }
  >;
  let at = 4 + jsonBytes;
  const lists: Record<string, ChunkList> = {};
  for (const [name, entry] of Object.entries(header)) {
    const hashBytes = chunkCount(entry.bytes) * HASH_BYTES;
    if (at + hashBytes > data.length) {
      throw new Error('the chunk lists are truncated');
    }
    lists[name] = {
      bytes: entry.bytes,
      runs: entry.runs,
      hashes: data.subarray(at, at + hashBytes)
    };
    at += hashBytes;
  }
  return lists;
}

// The chunk store: image files kept as content-addressed 4 KiB chunks, each stored once for the
// whole store (across checkpoints, branches and kernels). Why 4 KiB chunks, xxh3-128 and packs
// rather than one file per chunk: docs/architecture.md, with the figures in bench/README.md.
//
// Layout under <root> (folders 0700, files 0600):
//   packs/<name>.pack       immutable once renamed into place: the new chunks of one ingest
//                           (raw, or with a codec in zstd frames of up to 16 consecutive ones),
//                           then an index of them (hash, where, sizes, slot in a frame) and a
//                           trailer; written as packs/.tmp-<pid>-<name>.pack, flushed, renamed.
//   writers/<pid>-<r>.refs  one per ingest in progress: the name of every pack its chunk lists
//                           use, appended before it relies on that pack (a live list that
//                           garbage collection reads).
//   doomed/<name>.pack      packs garbage collection is about to delete; restored on its next run.
//   gc.lock                 held by the one garbage collection running (its pid).
//
// Garbage collection is mark-and-sweep over packs, safe against kill -9 anywhere: only packs that
// existed when it started are candidates; the unmarked ones are first renamed into doomed/, then
// the live lists are read again (an ingest that took a pack in the meantime has named it in its
// refs file, or has committed its image), and only what is still unmarked is deleted. Readers
// look in doomed/ too, so an interrupted collection never hides a chunk.

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

import { createXXHash128, type IHasher } from 'hash-wasm';

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

  packPath(name: string): string {
    return path.join(this.packsDir, `${name}.pack`);
  }

  async ensure(): Promise<void> {
    for (const dir of [this.root, this.packsDir, this.writersDir, this.doomedDir]) {
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
    const name = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
    const refsFile = path.join(
      this.writersDir,
      `${process.pid}-${randomBytes(4).toString('hex')}.refs`
    );
    const refs = await fs.open(refsFile, 'wx', 0o600);
    return new IngestSession(this, name, refsFile, refs, options.durable ?? true);
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
   */
  async materialize(list: ChunkList, dest: string): Promise<void> {
    const digest = await hasher();
    if (!this.codec && list.runs.some(run => run.zstd !== undefined)) {
      throw new Error('This image has compressed chunks, and the chunk store has no codec.');
    }
    const out = await fs.open(dest, 'w', 0o600);
    const packs = new Map<string, Promise<fs.FileHandle>>();
    const pack = (name: string) => {
      let handle = packs.get(name);
      if (!handle) {
        handle = this.openPack(name);
        // Seen when used; not an unhandled rejection before that.
        handle.catch(() => undefined);
        packs.set(name, handle);
      }
      return handle;
    };
    // Frames, and short raw runs, are read (and decompressed) on libuv's pool a few runs ahead of
    // their use: an image after many checkpoints is tens of thousands of short runs.
    const frames = new Map<string, Promise<Buffer | null>>();
    // Reads still running when the packs are closed at the end (after an error).
    const reading = new Set<Promise<unknown>>();
    const frameOf = (run: ChunkRun) => {
      const key = `${run.pack}:${run.at}:${run.zstd === undefined ? run.count : 'z'}`;
      let frame = frames.get(key);
      if (!frame) {
        const started: Promise<Buffer | null> = pack(run.pack).then(
          handle => this.readAhead(handle, run).catch(() => null),
          () => null
        );
        reading.add(started);
        void started.then(() => reading.delete(started));
        frame = started;
        frames.set(key, frame);
        if (frames.size > 4 * FRAMES_AHEAD) {
          frames.delete(frames.keys().next().value as string);
        }
      }
      return frame;
    };
    let ahead = 0;
    let index = 0;
    const fail = (pack: string, problem: string) =>
      new ChunkCorruptError(
        list.hashes.toString('hex', index * HASH_BYTES, (index + 1) * HASH_BYTES),
        pack,
        index * CHUNK_BYTES,
        problem
      );
    /** Checks `count` chunks from `index` on, laid one after the other in `bytes`. */
    const check = (pack: string, bytes: Buffer, count: number) => {
      for (let k = 0, start = 0; k < count; k++, index++) {
        const length = chunkLength(list, index);
        if (start + length > bytes.length) {
          throw fail(pack, 'its pack is too short');
        }
        const expected = list.hashes.subarray(index * HASH_BYTES, (index + 1) * HASH_BYTES);
        if (!Buffer.from(digest(bytes.subarray(start, start + length))).equals(expected)) {
          throw fail(pack, 'its bytes do not match its hash');
        }
        start += length;
      }
    };
    // Output goes out a block at a time, not once per run.
    const outBlock = Buffer.allocUnsafe(BLOCK_BYTES);
    let outBytes = 0;
    const flushOut = async () => {
      if (outBytes > 0) {
        await out.write(outBlock, 0, outBytes);
        outBytes = 0;
      }
    };
    const emit = async (bytes: Buffer) => {
      if (outBytes + bytes.length > outBlock.length) {
        await flushOut();
      }
      if (bytes.length >= outBlock.length) {
        await out.write(bytes);
      } else {
        bytes.copy(outBlock, outBytes);
        outBytes += bytes.length;
      }
    };
    const readsAhead = (run: ChunkRun) => run.zstd !== undefined || run.count <= FRAME_CHUNKS;
    try {
      const block = Buffer.allocUnsafe(BLOCK_BYTES);
      for (const [position, run] of list.runs.entries()) {
        for (; ahead < Math.min(position + FRAMES_AHEAD, list.runs.length); ahead++) {
          if (readsAhead(list.runs[ahead])) {
            void frameOf(list.runs[ahead]);
          }
        }
        const handle = await pack(run.pack).catch(() => {
          throw fail(run.pack, 'its pack is missing');
        });
        if (readsAhead(run)) {
          const frame = await frameOf(run);
          if (!frame) {
            throw fail(run.pack, 'its frame cannot be read or decompressed');
          }
          let bytes = 0;
          for (let k = 0; k < run.count; k++) {
            bytes += chunkLength(list, index + k);
          }
          const start = (run.slot ?? 0) * CHUNK_BYTES;
          const slice = frame.subarray(start, start + bytes);
          check(run.pack, slice, run.count);
          await emit(slice);
          continue;
        }
        await flushOut();
        let done = 0;
        while (done < run.count) {
          // As many chunks of the run as fit in a block (only the file's last is short).
          const count = Math.min(run.count - done, BLOCK_BYTES / CHUNK_BYTES);
          let bytes = 0;
          for (let k = 0; k < count; k++) {
            bytes += chunkLength(list, index + k);
          }
          const { bytesRead } = await handle.read(block, 0, bytes, run.at + done * CHUNK_BYTES);
          check(run.pack, block.subarray(0, bytesRead), count);
          await out.write(block, 0, bytes);
          done += count;
        }
      }
      await flushOut();
      if (index !== chunkCount(list.bytes)) {
        throw new Error(`the chunk list covers ${index} chunks of ${chunkCount(list.bytes)}`);
      }
    } catch (error) {
      await out.close().catch(() => undefined);
      await fs.rm(dest, { force: true });
      throw error;
    } finally {
      await Promise.all(reading);
      for (const handle of packs.values()) {
        await handle.then(
          opened => opened.close(),
          () => undefined
        );
      }
    }
    await out.close();
  }

  /** Reads a short raw run, or reads and decompresses a zstd frame. */
  private async readAhead(pack: fs.FileHandle, run: ChunkRun): Promise<Buffer> {
    if (run.zstd === undefined) {
      const bytes = Buffer.allocUnsafe(run.count * CHUNK_BYTES);
      const { bytesRead } = await pack.read(bytes, 0, bytes.length, run.at);
      return bytes.subarray(0, bytesRead);
    }
    return this.readFrame(pack, run);
  }

  /** Reads and decompresses a zstd frame. */
  private async readFrame(pack: fs.FileHandle, run: ChunkRun): Promise<Buffer> {
    const stored = Buffer.allocUnsafe(run.zstd as number);
    const { bytesRead } = await pack.read(stored, 0, stored.length, run.at);
    return (this.codec as Codec).decompress(stored.subarray(0, bytesRead));
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

/** One ingest: new chunks go into one pack, named in advance; `finish` publishes it. */
export class IngestSession {
  private readonly temp: string;
  private out: fs.FileHandle | null = null;
  /** Bytes of the pack so far (its magic comes first, written when it is opened). */
  private written = PACK_MAGIC.length;
  private readonly entries: IndexEntry[] = [];
  /** Chunks written by this session, not yet in the store's index. */
  private readonly fresh = new Map<string, Location>();
  private readonly claimed = new Set<string>();
  private finished = false;

  constructor(
    private readonly store: ChunkStore,
    readonly packName: string,
    private readonly refsFile: string,
    private readonly refs: fs.FileHandle,
    private readonly durable: boolean
  ) {
    this.temp = path.join(
      path.dirname(store.packPath(packName)),
      `.tmp-${process.pid}-${packName}.pack`
    );
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
   */
  async ingest(file: string, pause?: () => Promise<void>): Promise<ChunkList> {
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
    const pending = Buffer.allocUnsafe(BLOCK_BYTES);
    let pendingBytes = 0;
    const flush = async () => {
      if (pendingBytes > 0) {
        this.out ??= await this.openPack();
        await this.out.write(pending, 0, pendingBytes);
        pendingBytes = 0;
      }
    };
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
    // New chunks not stored yet: consecutive in the file, in `block`, at most FRAME_CHUNKS.
    let waiting: Array<{ hash: Buffer; key: string; chunk: Buffer }> = [];
    const storeWaiting = async () => {
      if (waiting.length === 0) {
        return;
      }
      await this.claim(this.packName);
      const raw = Buffer.concat(waiting.map(w => w.chunk));
      let frame: Buffer | null = null;
      if (this.store.codec && this.store.compressNew) {
        const compressed = await this.store.codec.compress(raw);
        frame = compressed.length <= raw.length * (1 - WORTH_COMPRESSING) ? compressed : null;
      }
      const at = this.written;
      waiting.forEach((w, k) => {
        const location: Location = frame
          ? { pack: this.packName, at, zstd: frame.length, slot: k }
          : { pack: this.packName, at: at + k * CHUNK_BYTES };
        this.entries.push({
          hash: w.hash,
          at: location.at,
          stored: frame ? frame.length : w.chunk.length,
          length: w.chunk.length,
          frameSlot: frame ? k + 1 : 0
        });
        if (w.chunk.length === CHUNK_BYTES) {
          // A short chunk is never reused at another position: only whole chunks are shared.
          this.fresh.set(w.key, location);
        }
        append(location, w.chunk.length);
      });
      const data = frame ?? raw;
      if (pendingBytes + data.length > pending.length) {
        await flush();
      }
      data.copy(pending, pendingBytes);
      pendingBytes += data.length;
      this.written += data.length;
      waiting = [];
    };
    try {
      for (;;) {
        const bytesRead = await readFully(input, block, bytes);
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
          if (location && location.pack !== this.packName && !this.claimed.has(location.pack)) {
            await this.claim(location.pack);
            // Claimed first, then checked: a collection that doomed it since is seen here.
            if (!(await exists(this.store.packPath(location.pack)))) {
              this.store.dropPack(location.pack);
              location = null;
            }
          }
          if (!location) {
            waiting.push({ hash, key, chunk });
            if (waiting.length === FRAME_CHUNKS) {
              await storeWaiting();
            }
            continue;
          }
          // The chunks before it in the file go first.
          await storeWaiting();
          append(location, chunk.length);
        }
        // `block` is read into again next: what waits in it is stored now.
        await storeWaiting();
        if (bytesRead < BLOCK_BYTES) {
          break;
        }
        await pause?.();
      }
      await flush();
    } finally {
      await input.close();
    }
    if (chunks !== expected) {
      throw new Error(`${file} shrank while it was being ingested`);
    }
    return { bytes, hashes, runs };
  }

  private async openPack(): Promise<fs.FileHandle> {
    const handle = await fs.open(this.temp, 'wx', 0o600);
    await handle.write(PACK_MAGIC);
    return handle;
  }

  /**
   * Writes the pack's index and renames it into place (flushed first when durable). The lists
   * returned by `ingest` are valid from here on.
   */
  async finish(): Promise<void> {
    if (this.finished) {
      return;
    }
    this.finished = true;
    if (this.entries.length === 0) {
      return;
    }
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
    if (this.durable) {
      await out.sync();
    }
    await out.close();
    this.out = null;
    await fs.rename(this.temp, this.store.packPath(this.packName));
    if (this.durable) {
      await fsyncPath(path.dirname(this.temp));
    }
    this.store.addPack(
      this.packName,
      this.entries.filter(entry => entry.length === CHUNK_BYTES)
    );
  }

  /** Bytes of this session's pack once finished (0 when every chunk was in the store): its new bytes. */
  get packBytes(): number {
    return this.finished && this.entries.length > 0
      ? this.written + this.entries.length * INDEX_ENTRY_BYTES + TRAILER_BYTES
      : 0;
  }

  /** Ends the session's claim on packs (after its lists are recorded), or abandons it. */
  async close(): Promise<void> {
    this.finished = true;
    if (this.out) {
      await this.out.close().catch(() => undefined);
      this.out = null;
    }
    await fs.rm(this.temp, { force: true });
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
async function takeLock(file: string): Promise<boolean> {
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

// The pages of a chunk image for a lazy restore's page server, read from the chunk store as they
// are asked for instead of rebuilding `pages-*.img` first. Only the ranges `criu restore` reads
// itself (pagemap entries not flagged PE_LAZY: file-backed private memory, vdso, locked or stack
// pages) are written into a sparse pages file; the rest is served by request. Every chunk is
// checked against its hash once when the image is opened (before the running kernel is stopped)
// and again before its bytes leave (docs/architecture.md, the lazy restore Decision).

import { promises as fs } from 'node:fs';
import path from 'node:path';

import {
  eagerRanges,
  fileRanges,
  PAGE_BYTES,
  parsePagemap,
  type Pagemap
} from '../engines/criu-pagemap';
import type { ServedPages } from '../engines/page-server';
import { ChunkCorruptError, type ChunkList, type ChunkListReader, type ChunkStore } from './chunks';

/**
 * KERNEL_CHECKPOINT_SERVE_PAGES=1 has a lazy restore of a chunk image served by the page server
 * instead of rebuilt first. Off by default: measured slower than the rebuild so far
 * (bench/README.md, "PAGES SERVED FROM CHUNKS").
 */
export const SERVE_PAGES_SETTING = 'KERNEL_CHECKPOINT_SERVE_PAGES';

const PAGEMAP_FILE = /^pagemap-(\d+)\.img$/;
/**
 * A fault asks for one page, and the next fault is usually beside it: small requests are read
 * in aligned blocks of this many pages, kept for the next ones (a compressed frame holds 16
 * chunks, and is decompressed once instead of once per page).
 */
const BLOCK_PAGES = 16;
/** Requests up to this many pages go through the blocks; larger ones (the background) do not. */
const SMALL_REQUEST_PAGES = 2 * BLOCK_PAGES;
/** Blocks kept (4 MiB). */
const BLOCKS_KEPT = 64;
export const PAGES_FILE = /^pages-(\d+)\.img$/;

/** What a restore gets besides the folder (see ServedPages). */
export type LazyPages = ServedPages;

interface ServedFile {
  dest: string;
  list: ChunkList;
  reader: ChunkListReader;
  /** Recently read blocks by index, oldest first (checked when read). */
  blocks: Map<number, Buffer>;
  /** The range after the last large request, read ahead (the daemon asks in address order). */
  ahead: { page: number; count: number; bytes: Promise<Buffer> } | null;
}

/** Chunks read at a time when checking a whole file. */
const CHECK_CHUNKS = 1024;
const CHECKS_AT_ONCE = 4;

/**
 * Reads every chunk of a served file once, checked against its hash: a restore opens the image
 * before the running kernel is stopped, so a damaged chunk refuses the restore and changes
 * nothing, rather than stop a kernel whose pages are half in (measured cost: bench/README.md).
 */
async function checkAll(file: ServedFile): Promise<void> {
  // A few reads in flight: the reads run on libuv's pool while this thread checks hashes.
  const blocks = Array.from({ length: CHECKS_AT_ONCE }, () =>
    Buffer.allocUnsafe(CHECK_CHUNKS * PAGE_BYTES)
  );
  let next = 0;
  const worker = async (block: Buffer) => {
    while (next < file.reader.chunks) {
      const first = next;
      next += CHECK_CHUNKS;
      await file.reader.read(first, Math.min(CHECK_CHUNKS, file.reader.chunks - first), block);
    }
  };
  await Promise.all(blocks.map(worker));
}

export class ChunkPageSource implements LazyPages {
  private users = 1;
  private filled: Promise<void> | null = null;

  private constructor(
    private readonly chunks: ChunkStore,
    private readonly maps: Map<number, { map: Pagemap; file: ServedFile }>,
    private readonly files: ServedFile[],
    /** Turns a damaged chunk into the error for the user (naming every checkpoint using it). */
    private readonly damaged: (error: ChunkCorruptError) => Promise<Error>
  ) {}

  get bytes(): number {
    return this.files.reduce((sum, file) => sum + file.list.bytes, 0);
  }

  /**
   * For the rebuilt folder `dir` (every other file already in it, pagemaps included): writes
   * each pages file sparse with its eager ranges only, and serves the rest from `lists`.
   */
  static async open(
    dir: string,
    lists: Record<string, ChunkList>,
    chunks: ChunkStore,
    damaged: (error: ChunkCorruptError) => Promise<Error>
  ): Promise<ChunkPageSource> {
    const maps = new Map<number, { map: Pagemap; file: ServedFile }>();
    const files: ServedFile[] = [];
    const byId = new Map<number, ServedFile>();
    const source = new ChunkPageSource(chunks, maps, files, damaged);
    try {
      for (const [name, list] of Object.entries(lists)) {
        const id = PAGES_FILE.exec(name)?.[1];
        if (id !== undefined) {
          const file = {
            dest: path.join(dir, name),
            list,
            reader: await chunks.reader(list),
            blocks: new Map<number, Buffer>(),
            ahead: null
          };
          files.push(file);
          byId.set(Number(id), file);
        }
      }
      for (const name of Object.keys(lists)) {
        const pid = PAGEMAP_FILE.exec(name)?.[1];
        if (pid === undefined) {
          continue;
        }
        const map = parsePagemap(await fs.readFile(path.join(dir, name)));
        const file = byId.get(map.pagesId);
        if (!file || map.filePages * PAGE_BYTES !== file.list.bytes) {
          throw new Error(`${name} does not describe pages-${map.pagesId}.img`);
        }
        maps.set(Number(pid), { map, file });
      }
      for (const file of files) {
        await source.writeEager(
          file,
          [...maps.values()].filter(use => use.file === file)
        );
        await checkAll(file);
      }
    } catch (error) {
      await source.release();
      throw error instanceof ChunkCorruptError ? await damaged(error) : error;
    }
    return source;
  }

  /** The pages file, sparse: holes where the page server will serve the pages. */
  private async writeEager(file: ServedFile, uses: Array<{ map: Pagemap }>): Promise<void> {
    const out = await fs.open(file.dest, 'w', 0o600);
    try {
      await out.truncate(file.list.bytes);
      for (const { map } of uses) {
        for (const range of eagerRanges(map)) {
          const bytes = await file.reader.read(range.page, range.count);
          await out.write(bytes, 0, bytes.length, range.page * PAGE_BYTES);
        }
      }
    } finally {
      await out.close();
    }
  }

  async read(pid: number, vaddr: number, count: number): Promise<Buffer> {
    const served = this.maps.get(pid);
    if (!served) {
      throw new Error(`the image has no pagemap for pid ${pid}`);
    }
    const into = Buffer.allocUnsafe(count * PAGE_BYTES);
    let done = 0;
    try {
      for (const range of fileRanges(served.map, vaddr, count)) {
        if (range.count <= SMALL_REQUEST_PAGES) {
          await this.readThroughBlocks(served.file, range.page, range.count, into.subarray(done));
        } else {
          await this.readAhead(served.file, range.page, range.count, into.subarray(done));
        }
        done += range.count * PAGE_BYTES;
      }
    } catch (error) {
      throw error instanceof ChunkCorruptError ? await this.damaged(error) : error;
    }
    return into;
  }

  /** A large request, from what was read ahead when it is the one expected; then the next. */
  private async readAhead(file: ServedFile, page: number, count: number, into: Buffer) {
    const ahead = file.ahead;
    file.ahead = null;
    if (ahead && ahead.page === page && ahead.count === count) {
      (await ahead.bytes).copy(into);
    } else {
      void ahead?.bytes.catch(() => undefined);
      await file.reader.read(page, count, into);
    }
    const next = page + count;
    const left = Math.min(count, file.reader.chunks - next);
    if (left > 0) {
      const bytes = file.reader.read(next, left);
      // A damaged chunk there is reported when (if) it is asked for.
      bytes.catch(() => undefined);
      file.ahead = { page: next, count: left, bytes };
    }
  }

  private async readThroughBlocks(
    file: ServedFile,
    page: number,
    count: number,
    into: Buffer
  ): Promise<void> {
    const pages = file.reader.chunks;
    for (let block = Math.floor(page / BLOCK_PAGES); block * BLOCK_PAGES < page + count; block++) {
      let bytes = file.blocks.get(block);
      if (bytes) {
        file.blocks.delete(block);
      } else {
        const first = block * BLOCK_PAGES;
        bytes = await file.reader.read(first, Math.min(BLOCK_PAGES, pages - first));
        if (file.blocks.size >= BLOCKS_KEPT) {
          file.blocks.delete(file.blocks.keys().next().value as number);
        }
      }
      file.blocks.set(block, bytes);
      const start = Math.max(page, block * BLOCK_PAGES);
      const end = Math.min(page + count, (block + 1) * BLOCK_PAGES);
      bytes.copy(
        into,
        (start - page) * PAGE_BYTES,
        (start - block * BLOCK_PAGES) * PAGE_BYTES,
        (end - block * BLOCK_PAGES) * PAGE_BYTES
      );
    }
  }

  fillIn(): Promise<void> {
    this.filled ??= (async () => {
      try {
        for (const file of this.files) {
          await this.chunks.materialize(file.list, file.dest);
        }
      } catch (error) {
        throw error instanceof ChunkCorruptError ? await this.damaged(error) : error;
      }
    })();
    return this.filled;
  }

  retain(): void {
    this.users++;
  }

  async release(): Promise<void> {
    if (--this.users === 0) {
      await Promise.all(this.files.map(file => file.reader.close().catch(() => undefined)));
    }
  }
}

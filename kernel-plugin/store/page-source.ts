// The pages of a chunk image for a lazy restore's page server, read from the chunk store as they
// are asked for instead of rebuilding `pages-*.img` first. Only the ranges `criu restore` reads
// itself are written into a sparse pages file: pagemap entries not flagged PE_LAZY (file-backed
// private memory, vdso, locked or stack pages), and those this module makes eager in the rebuilt
// folder's pagemaps (small VMAs, the prefetch hint: what a first cell touches); the rest is
// served by request. Every chunk is checked against its hash before its bytes are used or leave;
// when the image is opened (before the running kernel is stopped), also every chunk in a pack
// not known unchanged since it was written; the eager pages are written after that, while the
// running kernel stops, and `ready` holds `criu restore` back until they are in
// (docs/architecture.md, the lazy restore Decision).

import { promises as fs, writeSync } from 'node:fs';
import path from 'node:path';

import {
  eagerRanges,
  fileRanges,
  PAGE_BYTES,
  parsePagemap,
  parseVmas,
  PE_LAZY,
  serializePagemap,
  type FileRange,
  withEagerPages,
  type Pagemap
} from '../engines/criu-pagemap';
import { hintPages, type HotPages } from '../engines/criu-prefetch';
import { log } from '../supervisor/log';
import type { ServedPages } from '../engines/page-server';
import { ChunkCorruptError, type ChunkList, type ChunkListReader, type ChunkStore } from './chunks';

/**
 * A lazy restore of a chunk image is served by the page server instead of rebuilt first, unless
 * KERNEL_CHECKPOINT_SERVE_PAGES=0: measured 1.6-7.6x faster than the rebuild, though still 1.1-2.9x
 * a whole image's lazy restore (bench/README.md, "PAGES SERVED FROM CHUNKS").
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

/**
 * Compressed frames of eager pages decompressed at once: libuv's pool has 4 threads, and the
 * restore's own file work (the daemon's folder, its work copy) queues behind them there. At 16,
 * the daemon started only once every eager page was in (`KERNEL_CHECKPOINT_TIMINGS=1`: "the
 * eager pages in 0 ms" after it started); at 3 it starts meanwhile.
 */
const EAGER_FRAMES_AT_ONCE = 3;
/** Eager ranges are read in pieces of at most this many pages (4 zstd frames), aligned. */
const EAGER_READ_PAGES = 64;
/** Chunks read at a time when checking a file at open. */
const CHECK_CHUNKS = 1024;
const CHECKS_AT_ONCE = 4;

/**
 * The chunks of a served file that lie in packs not known unchanged since they were written
 * (`ChunkStore.unchangedPacks`), as [first, count) spans, none longer than CHECK_CHUNKS.
 */
export function untrustedSpans(
  list: ChunkList,
  trusted: ReadonlySet<string>
): Array<{ first: number; count: number }> {
  const spans: Array<{ first: number; count: number }> = [];
  let first = 0;
  for (const run of list.runs) {
    if (!trusted.has(run.pack)) {
      const last = spans[spans.length - 1];
      let start = first;
      let left = run.count;
      if (last && last.first + last.count === start && last.count < CHECK_CHUNKS) {
        const joined = Math.min(left, CHECK_CHUNKS - last.count);
        last.count += joined;
        start += joined;
        left -= joined;
      }
      for (; left > 0; start += CHECK_CHUNKS, left -= CHECK_CHUNKS) {
        spans.push({ first: start, count: Math.min(left, CHECK_CHUNKS) });
      }
    }
    first += run.count;
  }
  return spans;
}

/**
 * Reads the chunks of a served file in `spans` once, each checked against its hash: a restore
 * opens the image before the running kernel is stopped, so a damaged chunk refuses the restore
 * and changes nothing, rather than stop a kernel whose pages are half in (measured cost:
 * bench/README.md).
 */
async function check(
  file: ServedFile,
  spans: Array<{ first: number; count: number }>
): Promise<void> {
  // A few reads in flight: the reads run on libuv's pool while this thread checks hashes.
  const blocks = Array.from({ length: CHECKS_AT_ONCE }, () =>
    Buffer.allocUnsafe(CHECK_CHUNKS * PAGE_BYTES)
  );
  let next = 0;
  const worker = async (block: Buffer) => {
    while (next < spans.length) {
      const { first, count } = spans[next++];
      await file.reader.read(first, count, block);
    }
  };
  await Promise.all(blocks.map(worker));
}

/** KERNEL_CHECKPOINT_TIMINGS=1 logs how long each stage of opening a served image took. */
export function stageTimer(env: NodeJS.ProcessEnv = process.env): (stage: string) => void {
  let since = performance.now();
  return stage => {
    if (env.KERNEL_CHECKPOINT_TIMINGS === '1') {
      const now = performance.now();
      log.info(`timing: ${stage} in ${(now - since).toFixed(0)} ms`);
      since = now;
    }
  };
}

/** How a chunk image's pages files are checked and laid out when it is opened. */
export interface OpenOptions {
  /**
   * Read and check every chunk, even in packs unchanged since they were written
   * (KERNEL_CHECKPOINT_VERIFY=always).
   */
  rehash?: boolean;
  /**
   * Pages `criu restore` copies itself instead of the page server sending them: every lazy page
   * of a VMA up to 16 MiB (the interpreter's heap and small mappings, what a first cell
   * touches: `eagerAddresses`), and the image's prefetch hint when it has one. Null: none
   * (KERNEL_CHECKPOINT_PREFETCH=0).
   */
  prefetch?: { hint: HotPages | null } | null;
  /**
   * The image's own folder in the store, beside which its prefetch hint is kept: the restore's
   * faults become the next one's hint (criu-prefetch.ts). Unset: no hint is kept.
   */
  hintDir?: string;
}

/** A VMA at most this large has its pages restored eagerly (criu-prefetch.ts's `small`, 16 MiB). */
const SMALL_VMA_BYTES = 16 * 2 ** 20;

/**
 * The lazy pages of process `pid` to restore eagerly: each fault the page server answers is a
 * round trip through the daemon, TCP and this event loop (~0.3-1 ms on a busy machine, against
 * a few microseconds for criu lazy-pages reading a whole image's file), and a first cell faults
 * on thousands of pages outside the big arrays (bench/README.md, "PAGES SERVED FROM CHUNKS").
 * So: every lazy page of a VMA up to SMALL_VMA_BYTES (the interpreter's heap and small
 * mappings), and the hint's pages. Worked out range by range: a 4 GiB array is a million pages.
 */
async function eagerAddresses(
  dir: string,
  pid: number,
  map: Pagemap,
  hint: HotPages | null
): Promise<number[]> {
  // No mm image (CRIU writes one per process): then the hint's pages only.
  const mm = await fs.readFile(path.join(dir, `mm-${pid}.img`)).catch(() => null);
  const vmas = (mm ? parseVmas(mm) : []).filter(vma => vma.end - vma.start <= SMALL_VMA_BYTES);
  const addresses = [...(hint?.get(pid) ?? [])];
  let at = 0;
  for (const entry of map.entries) {
    if ((entry.flags & PE_LAZY) === 0) {
      continue;
    }
    const end = entry.vaddr + entry.pages * PAGE_BYTES;
    while (at < vmas.length && vmas[at].end <= entry.vaddr) {
      at++;
    }
    for (let vma = at; vma < vmas.length && vmas[vma].start < end; vma++) {
      const from = Math.max(entry.vaddr, vmas[vma].start);
      const to = Math.min(end, vmas[vma].end);
      for (let address = from; address < to; address += PAGE_BYTES) {
        addresses.push(address);
      }
    }
  }
  return addresses;
}

/**
 * The chunks of each pages file of the image in `dir` that a lazy restore of it copies before
 * the kernel runs when it has no hint (what `criu restore` reads itself, and every lazy page of
 * a small VMA: `eagerAddresses`), by file name; the ingest keeps them raw (`IngestSession.ingest`).
 * Empty for an image without pagemaps (DMTCP's) or one they do not parse in: nothing is kept raw
 * then, and the image is stored all the same.
 */
export async function eagerChunkRanges(
  dir: string
): Promise<Map<string, Array<{ first: number; count: number }>>> {
  const ranges = new Map<string, Array<{ first: number; count: number }>>();
  try {
    for (const name of await fs.readdir(dir)) {
      const pid = PAGEMAP_FILE.exec(name)?.[1];
      if (pid === undefined) {
        continue;
      }
      const map = parsePagemap(await fs.readFile(path.join(dir, name)));
      const split = withEagerPages(map, await eagerAddresses(dir, Number(pid), map, null)).map;
      const file = `pages-${map.pagesId}.img`;
      ranges.set(file, [
        ...(ranges.get(file) ?? []),
        ...eagerRanges(split).map(range => ({ first: range.page, count: range.count }))
      ]);
    }
  } catch (error) {
    log.warn(`the eager pages of ${dir} are stored like the others: ${String(error)}`);
    return new Map();
  }
  return ranges;
}

/**
 * Ranges of a file side by side joined, then cut to at most EAGER_READ_PAGES at multiples of it:
 * eager entries are often a page or two each (a heap with holes), and a piece's raw chunks are
 * read into a buffer of their own.
 */
export function joinRanges(ranges: FileRange[]): FileRange[] {
  const joined: FileRange[] = [];
  for (const range of [...ranges].sort((a, b) => a.page - b.page)) {
    const last = joined[joined.length - 1];
    if (last && last.page + last.count === range.page) {
      last.count += range.count;
    } else {
      joined.push({ ...range });
    }
  }
  return joined.flatMap(range => {
    const pieces: FileRange[] = [];
    for (let page = range.page; page < range.page + range.count;) {
      const end = Math.min(
        range.page + range.count,
        (Math.floor(page / EAGER_READ_PAGES) + 1) * EAGER_READ_PAGES
      );
      pieces.push({ page, count: end - page });
      page = end;
    }
    return pieces;
  });
}

export class ChunkPageSource implements LazyPages {
  private users = 1;
  private filled: Promise<void> | null = null;

  hint: { imageDir: string; pages: HotPages | null } | null = null;

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
    damaged: (error: ChunkCorruptError) => Promise<Error>,
    options: OpenOptions = {}
  ): Promise<ChunkPageSource> {
    const maps = new Map<number, { map: Pagemap; file: ServedFile }>();
    const files: ServedFile[] = [];
    const byId = new Map<number, ServedFile>();
    const source = new ChunkPageSource(chunks, maps, files, damaged);
    const timed = stageTimer();
    let eagerPages = 0;
    if (options.hintDir !== undefined && options.prefetch) {
      source.hint = { imageDir: options.hintDir, pages: options.prefetch.hint };
    }
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
          // For readSync: a missing pack refuses the image here, before the kernel is stopped.
          await file.reader.openPacks();
          files.push(file);
          byId.set(Number(id), file);
        }
      }
      timed('served pages: readers opened');
      for (const name of Object.keys(lists)) {
        const pid = PAGEMAP_FILE.exec(name)?.[1];
        if (pid === undefined) {
          continue;
        }
        let map = parsePagemap(await fs.readFile(path.join(dir, name)));
        const eager = options.prefetch
          ? await eagerAddresses(dir, Number(pid), map, options.prefetch.hint)
          : [];
        if (eager.length) {
          // The rebuilt folder is ours: its pagemap gets those pages without PE_LAZY (the pages
          // file keeps its layout), and `writeEager` writes them.
          const split = withEagerPages(map, eager);
          map = split.map;
          eagerPages += split.eager;
          await fs.writeFile(path.join(dir, name), serializePagemap(map), { mode: 0o600 });
        }
        const file = byId.get(map.pagesId);
        if (!file || map.filePages * PAGE_BYTES !== file.list.bytes) {
          throw new Error(`${name} does not describe pages-${map.pagesId}.img`);
        }
        maps.set(Number(pid), { map, file });
      }
      timed(`served pages: pagemaps read, ${eagerPages} pages made eager`);
      const hinted = options.prefetch?.hint ? hintPages(options.prefetch.hint) : 0;
      if (hinted > 0) {
        // The line criu-prefetch.ts logs for a whole image, for the same hint.
        log.info(
          `lazy restore: ${hinted} pages (${((hinted * PAGE_BYTES) / 2 ** 20).toFixed(1)} MiB) ` +
            `of the previous run's first touches restored first`
        );
      }
      // A pages file no process's pagemap names (shared memory's, `pagemap-shmem-*.img`) is
      // not served but written whole: `criu restore` reads it itself.
      for (const file of files.filter(file => ![...maps.values()].some(use => use.file === file))) {
        await chunks.materialize(file.list, file.dest);
        files.splice(files.indexOf(file), 1);
        await file.reader.close();
      }
      for (const file of files) {
        const trusted = options.rehash
          ? new Set<string>()
          : await chunks.unchangedPacks(file.list.runs.map(run => run.pack));
        const spans = untrustedSpans(file.list, trusted);
        await check(file, spans);
        timed(`served pages: ${spans.reduce((n, span) => n + span.count, 0)} chunks checked`);
      }
    } catch (error) {
      await source.release();
      throw error instanceof ChunkCorruptError ? await damaged(error) : error;
    }
    // Every chunk that could have changed since its pack was written is checked by now, so the
    // eager pages are written while the running kernel is stopped (`ready` holds `criu restore`
    // back until they are in): each is still checked against its hash before it is written.
    const eagerTimed = stageTimer();
    source.eagerWritten = Promise.all(
      files.map(file =>
        source.writeEager(
          file,
          [...maps.values()].filter(use => use.file === file)
        )
      )
    ).then(() => eagerTimed(`served pages: ${eagerPages} eager pages written`));
    source.eagerWritten.catch(() => undefined);
    return source;
  }

  /** The eager pages' writing, started by `open` (see `ready`). */
  private eagerWritten: Promise<void> = Promise.resolve();

  async ready(): Promise<void> {
    try {
      await this.eagerWritten;
    } catch (error) {
      throw error instanceof ChunkCorruptError ? await this.damaged(error) : error;
    }
  }

  /** The pages file, sparse: holes where the page server will serve the pages. */
  private async writeEager(file: ServedFile, uses: Array<{ map: Pagemap }>): Promise<void> {
    const out = await fs.open(file.dest, 'w', 0o600);
    try {
      await out.truncate(file.list.bytes);
      // Hundreds of short ranges once small VMAs are eager, in the same compressed frames (the
      // interpreter's heap): each frame decompressed once, several at once on libuv's pool;
      // raw chunks read and written on this thread (the page cache, then tmpfs or the store's
      // disk) rather than a round trip through the pool each.
      await file.reader.readRanges(
        joinRanges(uses.flatMap(({ map }) => eagerRanges(map))).map(range => ({
          first: range.page,
          count: range.count
        })),
        (first, bytes) => {
          for (let done = 0; done < bytes.length;) {
            done += writeSync(out.fd, bytes, done, bytes.length - done, first * PAGE_BYTES + done);
          }
        },
        EAGER_FRAMES_AT_ONCE
      );
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
        const target = into.subarray(done);
        if (served.file.reader.readSync(range.page, range.count, target)) {
          // Raw chunks: read here from the page cache, as criu lazy-pages reads a whole image.
        } else if (range.count <= SMALL_REQUEST_PAGES) {
          await this.readThroughBlocks(served.file, range.page, range.count, target);
        } else {
          await this.readAhead(served.file, range.page, range.count, target);
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
      await this.ready();
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
      await this.eagerWritten.catch(() => undefined);
      await Promise.all(this.files.map(file => file.reader.close().catch(() => undefined)));
    }
  }
}

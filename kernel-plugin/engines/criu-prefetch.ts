// Prefetch for lazy restore (REAP-style): the pages a kernel touched first in the previous lazy
// restore of its image (or of its lineage) are restored before it runs, and only the rest is left
// to `criu lazy-pages`. Its first cells then fault on far fewer pages, each fault being a round
// trip through the daemon. How: `criu restore --lazy-pages` copies itself every pagemap entry not
// flagged PE_LAZY, and the daemon serves only the flagged ones (criu/mem.c, criu/uffd.c), so a
// work copy of the image whose pagemaps have the hot pages split off without PE_LAZY does it; the
// image itself is never changed (its checksums), the work copy is symlinks to its files but the
// rewritten pagemaps. The hot set is a hint kept beside the image (`lazy-hint.json`, not part of
// the image's checksums): eager or lazy the bytes are the same, so a missing or garbage hint only
// means no prefetch. docs/engines.md ("Lazy restore") has the measured facts.

import { promises as fs } from 'node:fs';
import path from 'node:path';

import { log } from '../supervisor/log';
import {
  PAGE_BYTES,
  PE_LAZY,
  parsePagemap,
  parseVmas,
  serializePagemap,
  withEagerPages,
  withMergedLazyEntries
} from './criu-pagemap';

/** The hint's file, beside the image's folder (`<checkpoint>/image`) in the store. */
export const HINT_FILE = 'lazy-hint.json';
const HINT_FORMAT = 'kernel-checkpoint-lazy-hint/1';
/**
 * At most this many pages (16 MiB) are prefetched: the first faults of the previous runs, oldest
 * first. A kernel's first cell faults on ~1,900-2,400 pages (measured, docs/engines.md); what
 * comes after them is later cells' (a loop over an array faults on every page it reaches before
 * the background transfer), which the background transfer serves well enough. A restore copies
 * eager pages at ~1 GiB/s, so this also bounds what a prefetch adds before the kernel runs.
 */
export const MAX_HINT_PAGES = 4096;

/** The hot pages of each process of an image (its pid in the image: page addresses). */
export type HotPages = Map<number, number[]>;

/**
 * KERNEL_CHECKPOINT_PREFETCH: what a lazy restore makes eager before the kernel runs. `hint` (or
 * `1`): the previous run's first touches, with the daemon logging its faults (-v4) for the next
 * one; `small`: every lazy-able VMA up to SMALL_VMA_BYTES, with no hint and no fault log; `0`:
 * nothing (the daemon without -v4, as before prefetch: the bench's baseline). Unset:
 * DEFAULT_PREFETCH.
 */
export const PREFETCH_SETTING = 'KERNEL_CHECKPOINT_PREFETCH';

export type PrefetchMode = 'hint' | 'small' | 'off';

/**
 * Chosen by bench/lazy.py (bench/README.md, "LAZY RESTORE"): 0.64x lazy without prefetch at
 * 4 GiB and 1.22x at 1 GiB in the latest run; `small` 1.19x and 1.37x.
 */
export const DEFAULT_PREFETCH: PrefetchMode = 'hint';

export function prefetchMode(env: NodeJS.ProcessEnv): PrefetchMode {
  const value = env[PREFETCH_SETTING];
  if (value === '0') {
    return 'off';
  }
  if (value === 'small') {
    return 'small';
  }
  return value === 'hint' || value === '1' ? 'hint' : DEFAULT_PREFETCH;
}

/** Whether lazy restores prefetch from a hint (and record faults for it). */
export function prefetches(env: NodeJS.ProcessEnv): boolean {
  return prefetchMode(env) === 'hint';
}

/**
 * Whether a lazy restore logs its faults (the daemon at -v4) to make or grow the hint: only while
 * prefetch is on and the hint has room. A full hint takes no more pages (`mergeHints` keeps the
 * older ones first), and the log is dear: several lines per fault and per background transfer
 * (45 MB for the first lazy restore of a 4 GiB kernel whose next cell read every eighth page
 * of its array: 122,817 faults; bench/README.md, "LAZY RESTORE WITH PREFETCH").
 */
export function logsFaults(env: NodeJS.ProcessEnv, hint: HotPages | null): boolean {
  return prefetches(env) && (hint === null || hintPages(hint) < MAX_HINT_PAGES);
}

/**
 * KERNEL_CHECKPOINT_PREFETCH=small: every lazy-able VMA up to this size is restored eagerly (the
 * interpreter's small mappings), big ones lazily.
 */
const SMALL_VMA_BYTES = 16 * 2 ** 20;

/** The lazy pages of every VMA up to SMALL_VMA_BYTES, per process of the image. */
export async function smallVmaPages(imageDir: string): Promise<HotPages> {
  const hot: HotPages = new Map();
  for (const name of await fs.readdir(imageDir)) {
    const pid = /^pagemap-(\d+)\.img$/.exec(name)?.[1];
    if (!pid) {
      continue;
    }
    const map = parsePagemap(await fs.readFile(path.join(imageDir, name)));
    const vmas = parseVmas(await fs.readFile(path.join(imageDir, `mm-${pid}.img`)));
    const small = vmas.filter(vma => vma.end - vma.start <= SMALL_VMA_BYTES);
    const pages: number[] = [];
    let at = 0;
    for (const entry of map.entries) {
      if ((entry.flags & PE_LAZY) === 0) {
        continue;
      }
      for (let page = 0; page < entry.pages; page++) {
        const address = entry.vaddr + page * PAGE_BYTES;
        while (at < small.length && small[at].end <= address) {
          at++;
        }
        if (at < small.length && small[at].start <= address) {
          pages.push(address);
        }
      }
    }
    hot.set(Number(pid), pages);
  }
  return hot;
}

/**
 * Where the hint of the image in `imageDir` is: beside it, when it is a store's image folder
 * (`<checkpoint>/image`, or a checkpoint being written); null for any other folder (a chunk
 * image's rebuilt files are in a temporary folder: a served one's restore is given the image's
 * own folder instead, `ServedPages.hint`).
 */
export function hintPathOf(imageDir: string): string | null {
  return path.basename(imageDir) === 'image' ? path.join(path.dirname(imageDir), HINT_FILE) : null;
}

/**
 * The hint beside `imageDir`, or null when there is none (a never restored image) or it cannot be
 * used (said in the log: the restore goes on without it).
 */
export async function readHint(imageDir: string): Promise<HotPages | null> {
  const file = hintPathOf(imageDir);
  if (!file) {
    return null;
  }
  let text: string;
  try {
    const handle = await fs.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      text = await handle.readFile('utf8');
    } finally {
      await handle.close();
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      log.warn(`lazy restore: the prefetch hint ${file} is ignored (${(error as Error).message})`);
    }
    return null;
  }
  try {
    return parseHint(text);
  } catch (error) {
    log.warn(`lazy restore: the prefetch hint ${file} is ignored (${(error as Error).message})`);
    return null;
  }
}

/** A hint's JSON: `{ format, pages: { "<pid>": [[address, pages], ...] } }`; throws if malformed. */
export function parseHint(text: string): HotPages {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new Error('it is not JSON');
  }
  const record = data as { format?: unknown; pages?: unknown };
  if (typeof data !== 'object' || data === null || record.format !== HINT_FORMAT) {
    throw new Error(`its format is not ${HINT_FORMAT}`);
  }
  if (typeof record.pages !== 'object' || record.pages === null) {
    throw new Error('it has no pages');
  }
  const hot: HotPages = new Map();
  let total = 0;
  for (const [pid, ranges] of Object.entries(record.pages)) {
    if (!/^[1-9]\d*$/.test(pid) || !Array.isArray(ranges)) {
      throw new Error(`its entry ${JSON.stringify(pid)} is not a pid's page ranges`);
    }
    const pages: number[] = [];
    for (const range of ranges as unknown[]) {
      const [start, count] = Array.isArray(range) ? (range as unknown[]) : [];
      if (
        !Number.isSafeInteger(start) ||
        (start as number) % PAGE_BYTES !== 0 ||
        !Number.isSafeInteger(count) ||
        (count as number) < 1 ||
        (total += count as number) > MAX_HINT_PAGES
      ) {
        throw new Error(`pid ${pid} has a range that is not [page address, pages] or too many`);
      }
      for (let page = 0; page < (count as number); page++) {
        pages.push((start as number) + page * PAGE_BYTES);
      }
    }
    hot.set(Number(pid), pages);
  }
  return hot;
}

/** The hint's JSON for `hot` (pages as sorted ranges). */
export function formatHint(hot: HotPages): string {
  const pages: Record<string, Array<[number, number]>> = {};
  for (const [pid, addresses] of hot) {
    const ranges: Array<[number, number]> = [];
    for (const address of [...new Set(addresses)].sort((a, b) => a - b)) {
      const last = ranges[ranges.length - 1];
      if (last && last[0] + last[1] * PAGE_BYTES === address) {
        last[1]++;
      } else {
        ranges.push([address, 1]);
      }
    }
    pages[String(pid)] = ranges;
  }
  return JSON.stringify({ format: HINT_FORMAT, pages });
}

/**
 * Writes the hint beside `imageDir` (0600, renamed into place so a reader sees a whole one).
 * A failure is logged and changes nothing else: the hint is only an optimisation.
 */
export async function writeHint(imageDir: string, hot: HotPages): Promise<void> {
  const file = hintPathOf(imageDir);
  if (!file) {
    return;
  }
  const partial = `${file}.${process.pid}.partial`;
  try {
    // A new file (never through a link left in its place), renamed over the old hint.
    await fs.rm(partial, { force: true });
    await fs.writeFile(partial, formatHint(hot), { mode: 0o600, flag: 'wx' });
    await fs.rename(partial, file);
  } catch (error) {
    await fs.rm(partial, { force: true }).catch(() => undefined);
    log.warn(
      `lazy restore: could not keep the prefetch hint ${file} (${(error as Error).message})`
    );
  }
}

/**
 * The pages each process faulted on, in order, from the daemon's log at -v4 (`lp_debug` in
 * criu/uffd.c: "PID-FD: #PF at 0xADDRESS").
 */
export function faultsInLog(text: string): HotPages {
  const faults: HotPages = new Map();
  for (const match of text.matchAll(/ (\d+)-\d+: #PF at 0x([0-9a-f]+)$/gm)) {
    const pid = Number(match[1]);
    const pages = faults.get(pid) ?? [];
    pages.push(parseInt(match[2], 16));
    faults.set(pid, pages);
  }
  return faults;
}

/**
 * The previous hint's pages, then the newer faults, up to MAX_HINT_PAGES in all: the same process
 * at the same addresses (a checkpoint of a restored kernel), so they add up.
 */
export function mergeHints(older: HotPages | null, newer: HotPages): HotPages {
  const merged: HotPages = new Map();
  const seen = new Set<string>();
  let total = 0;
  for (const hot of [older ?? new Map<number, number[]>(), newer]) {
    for (const [pid, pages] of hot) {
      for (const page of pages) {
        const key = `${pid}:${page}`;
        if (total >= MAX_HINT_PAGES || seen.has(key)) {
          continue;
        }
        seen.add(key);
        total++;
        const list = merged.get(pid) ?? [];
        list.push(page);
        merged.set(pid, list);
      }
    }
  }
  return merged;
}

/** How many pages a hint holds. */
export function hintPages(hot: HotPages): number {
  let total = 0;
  for (const pages of hot.values()) {
    total += pages.length;
  }
  return total;
}

/**
 * A work copy of `imageDir` in `into` (a new 0700 folder) whose pagemaps have the hot pages
 * eager and their lazy entries merged (`withMergedLazyEntries`: fewer entries for the daemon to
 * walk on every fault); every other file is a symbolic link to the image's own (CRIU opens image
 * files by name, following links). Returns how many pages became eager (0: nothing to prefetch).
 */
export async function prefetchCopy(imageDir: string, into: string, hot: HotPages): Promise<number> {
  await fs.mkdir(into, { mode: 0o700 });
  const absolute = path.resolve(imageDir);
  let eager = 0;
  for (const name of await fs.readdir(absolute)) {
    const pid = /^pagemap-(\d+)\.img$/.exec(name)?.[1];
    if (pid) {
      const pages = hot.get(Number(pid)) ?? [];
      const split = withEagerPages(
        parsePagemap(await fs.readFile(path.join(absolute, name))),
        pages
      );
      // Without the process's VMAs (an image without its mm file), entries are not merged.
      const vmas = await fs
        .readFile(path.join(absolute, `mm-${pid}.img`))
        .then(parseVmas, () => []);
      const merged = withMergedLazyEntries(split.map, vmas);
      if (split.eager > 0 || merged.merged > 0) {
        await fs.writeFile(path.join(into, name), serializePagemap(merged.map), { mode: 0o600 });
        eager += split.eager;
        continue;
      }
    }
    await fs.symlink(path.join(absolute, name), path.join(into, name));
  }
  return eager;
}

/** The hint each lazily restored kernel measured, carried to its next checkpoints. */
const kernelHints = new WeakMap<object, HotPages>();

function rememberHint(kernel: object, hot: HotPages): void {
  kernelHints.set(kernel, hot);
}

/**
 * The folder a lazy restore of `imageDir` reads: a copy of it in `workDir` (the daemon's folder,
 * removed with it) with its lazy pagemap entries merged and the hint's pages (or, with
 * KERNEL_CHECKPOINT_PREFETCH=small, the small VMAs' pages) eager; the image itself if the copy
 * cannot be made (said in the log: eager or lazy, merged or not, the bytes are the same).
 */
export async function servedImage(
  imageDir: string,
  workDir: string,
  env: NodeJS.ProcessEnv
): Promise<{ dir: string; hint: HotPages | null }> {
  const small = prefetchMode(env) === 'small';
  const hint = prefetches(env) ? await readHint(imageDir) : null;
  const dir = path.join(workDir, 'image');
  try {
    const hot = hint ?? (small ? await smallVmaPages(imageDir) : new Map<number, number[]>());
    const eager = await prefetchCopy(imageDir, dir, hot);
    if (eager > 0) {
      log.info(
        `lazy restore: ${eager} pages (${((eager * PAGE_BYTES) / 2 ** 20).toFixed(1)} MiB) of ` +
          (hint
            ? `the previous run's first touches restored first`
            : `VMAs up to ${SMALL_VMA_BYTES / 2 ** 20} MiB restored first`)
      );
    }
    return { dir, hint };
  } catch (error) {
    log.warn(
      `lazy restore: no work copy of ${imageDir} (${(error as Error).message}); its pages are ` +
        `served as the image has them, without prefetch`
    );
  }
  await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  return { dir: imageDir, hint };
}

/**
 * After a lazy restore: the pages the kernel faulted on (after the hint's own) become the hint of
 * the image it came from and of the kernel's next checkpoints.
 */
export async function recordFaults(
  kernel: object,
  imageDir: string,
  hint: HotPages | null,
  faults: HotPages
): Promise<void> {
  const merged = mergeHints(hint, faults);
  if (hintPages(merged) === 0) {
    return;
  }
  rememberHint(kernel, merged);
  if (hintPages(faults) > 0) {
    await writeHint(imageDir, merged);
  }
}

/** A checkpoint of a lazily restored kernel gets the hint its restore measured. */
export async function carryHint(kernel: object, imageDir: string): Promise<void> {
  const hot = kernelHints.get(kernel);
  if (hot) {
    await writeHint(imageDir, hot);
  }
}

// CRIU's pagemap images (`pagemap-PID.img`): which pages of a process's address space its pages
// file (`pages-ID.img`) holds, and where, and which of them a lazy restore leaves to the daemon
// (PE_LAZY). Read, and written back with some entries split (the prefetch of criu-prefetch.ts
// makes the hot pages eager). The format, from CRIU's
// `images/pagemap.proto` and `criu/pagemap.c`, is in docs/architecture.md (the lazy restore
// Decision): 8 bytes of magics, then messages, each a little-endian u32 length and protobuf bytes;
// `pagemap_head { pages_id = 1 }` first, then `pagemap_entry { vaddr = 1; compat_nr_pages = 2;
// in_parent = 3; flags = 4; nr_pages = 5 }`. Five varint fields: no protobuf library for that.

export const PAGE_BYTES = 4096;

/** `pagemap_entry.flags` bits (criu/include/pagemap.h). */
export const PE_PARENT = 1 << 0;
export const PE_LAZY = 1 << 1;
export const PE_PRESENT = 1 << 2;

const MAGICS_BYTES = 8;

export interface PagemapEntry {
  vaddr: number;
  pages: number;
  flags: number;
  /** The entry's first page in the pages file (entries flagged PE_PRESENT only; else -1). */
  filePage: number;
}

export interface Pagemap {
  /** The image's first 8 bytes (CRIU's magics), kept as they were when written back. */
  magics: Buffer;
  pagesId: number;
  entries: PagemapEntry[];
  /** Pages the pages file holds. */
  filePages: number;
}

/** A range of pages in the pages file. */
export interface FileRange {
  page: number;
  count: number;
}

/** A pagemap image's entries; a malformed image throws, saying where. */
export function parsePagemap(data: Buffer): Pagemap {
  if (data.length < MAGICS_BYTES) {
    throw new Error('a pagemap image shorter than its magics');
  }
  const messages: Array<Map<number, number>> = [];
  for (let at = MAGICS_BYTES; at < data.length;) {
    if (at + 4 > data.length) {
      throw new Error(`a pagemap message's length is cut off at byte ${at}`);
    }
    const length = data.readUInt32LE(at);
    at += 4;
    if (at + length > data.length) {
      throw new Error(`a pagemap message of ${length} bytes at byte ${at} goes past the image`);
    }
    messages.push(varintFields(data.subarray(at, at + length), at));
    at += length;
  }
  if (messages.length === 0 || !messages[0].has(1)) {
    throw new Error('a pagemap image without its head (pages_id)');
  }
  const entries: PagemapEntry[] = [];
  let filePages = 0;
  for (const fields of messages.slice(1)) {
    const pages = fields.get(5) ?? fields.get(2) ?? 0;
    // Images from before `flags` say only whether the pages are in the parent image.
    const flags = fields.get(4) ?? (fields.get(3) ? PE_PARENT : PE_PRESENT);
    const present = (flags & PE_PRESENT) !== 0;
    entries.push({ vaddr: fields.get(1) ?? 0, pages, flags, filePage: present ? filePages : -1 });
    if (present) {
      filePages += pages;
    }
  }
  return {
    magics: Buffer.from(data.subarray(0, MAGICS_BYTES)),
    pagesId: messages[0].get(1) as number,
    entries,
    filePages
  };
}

/** The varint fields of one protobuf message (numbers up to 2^53, as addresses are). */
function varintFields(message: Buffer, base: number): Map<number, number> {
  const fields = new Map<number, number>();
  for (let at = 0; at < message.length;) {
    const [key, afterKey] = varint(message, at, base);
    if ((key & 7) !== 0) {
      throw new Error(`a pagemap field of wire type ${key & 7} at byte ${base + at}`);
    }
    const [value, afterValue] = varint(message, afterKey, base);
    fields.set(Math.floor(key / 8), value);
    at = afterValue;
  }
  return fields;
}

function varint(bytes: Buffer, start: number, base: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (let at = start; at < bytes.length && at < start + 10; at++) {
    value += (bytes[at] & 0x7f) * scale;
    scale *= 128;
    if ((bytes[at] & 0x80) === 0) {
      return [value, at + 1];
    }
  }
  throw new Error(`a pagemap varint is cut off at byte ${base + start}`);
}

/**
 * Where pages [vaddr, vaddr + count pages) are in the pages file, as ranges (a request may span
 * entries); throws if any of them is not in it (not mapped, or not present).
 */
export function fileRanges(map: Pagemap, vaddr: number, count: number): FileRange[] {
  const ranges: FileRange[] = [];
  let address = vaddr;
  let left = count;
  // The entry holding `address`: entries are sorted by address.
  let low = 0;
  let high = map.entries.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >> 1;
    if (map.entries[middle].vaddr <= address) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  for (let index = low; left > 0; index++) {
    const entry = map.entries[index];
    const skip = entry ? (address - entry.vaddr) / PAGE_BYTES : -1;
    if (
      !entry ||
      entry.filePage < 0 ||
      skip < 0 ||
      skip >= entry.pages ||
      !Number.isInteger(skip)
    ) {
      throw new Error(
        `pages at 0x${address.toString(16)} (${left} of a request for ${count}) are not in the image`
      );
    }
    const n = Math.min(entry.pages - skip, left);
    const last = ranges[ranges.length - 1];
    if (last && last.page + last.count === entry.filePage + skip) {
      last.count += n;
    } else {
      ranges.push({ page: entry.filePage + skip, count: n });
    }
    address += n * PAGE_BYTES;
    left -= n;
  }
  return ranges;
}

/** The pages file's ranges that `criu restore` reads itself even when lazy (not PE_LAZY). */
export function eagerRanges(map: Pagemap): FileRange[] {
  return map.entries
    .filter(entry => entry.filePage >= 0 && (entry.flags & PE_LAZY) === 0)
    .map(entry => ({ page: entry.filePage, count: entry.pages }));
}

/**
 * The image bytes of `map`: its magics, its head, then each entry with `vaddr`, `compat_nr_pages`
 * (required by the proto; 0, as CRIU writes it, since `nr_pages` is set), `in_parent` when the
 * pages are in the parent image, `flags` and `nr_pages`.
 */
export function serializePagemap(map: Pagemap): Buffer {
  const parts: Buffer[] = [map.magics, message([[1, map.pagesId]])];
  for (const entry of map.entries) {
    const fields: Array<[number, number]> = [
      [1, entry.vaddr],
      [2, 0]
    ];
    if (entry.flags & PE_PARENT) {
      fields.push([3, 1]);
    }
    fields.push([4, entry.flags], [5, entry.pages]);
    parts.push(message(fields));
  }
  return Buffer.concat(parts);
}

/** One length-prefixed message of varint fields. */
function message(fields: Array<[number, number]>): Buffer {
  const body = Buffer.concat(fields.map(([field, value]) => writeVarint(field * 8, value)));
  const length = Buffer.alloc(4);
  length.writeUInt32LE(body.length);
  return Buffer.concat([length, body]);
}

/** A field's key and its value, as varints (values up to 2^53). */
function writeVarint(key: number, value: number): Buffer {
  const bytes: number[] = [];
  for (const number of [key, value]) {
    let left = number;
    while (left >= 128) {
      bytes.push((left % 128) | 0x80);
      left = Math.floor(left / 128);
    }
    bytes.push(left);
  }
  return Buffer.from(bytes);
}

/**
 * `map` with the pages of `hot` (page addresses) taken out of the lazy entries: each lazy entry
 * holding some is split at their edges, and the pieces holding them lose PE_LAZY, so that
 * `criu restore --lazy-pages` copies them itself before the process runs, and the daemon serves
 * only the rest. The pages file is unchanged (the present entries' pages stay in order). Returns
 * the new map and how many pages became eager.
 */
export function withEagerPages(
  map: Pagemap,
  hot: Iterable<number>
): { map: Pagemap; eager: number } {
  const wanted = [...new Set(hot)]
    .filter(address => address % PAGE_BYTES === 0)
    .sort((a, b) => a - b);
  const entries: PagemapEntry[] = [];
  let eager = 0;
  let next = 0;
  for (const entry of map.entries) {
    const end = entry.vaddr + entry.pages * PAGE_BYTES;
    while (next < wanted.length && wanted[next] < entry.vaddr) {
      next++;
    }
    if ((entry.flags & PE_LAZY) === 0 || next >= wanted.length || wanted[next] >= end) {
      entries.push({ ...entry });
      continue;
    }
    // Walk the entry page run by page run, alternating lazy and eager pieces.
    let at = entry.vaddr;
    let filePage = entry.filePage;
    const piece = (to: number, flags: number) => {
      const pages = (to - at) / PAGE_BYTES;
      if (pages > 0) {
        entries.push({ vaddr: at, pages, flags, filePage });
        filePage = filePage >= 0 ? filePage + pages : -1;
        at = to;
      }
    };
    while (next < wanted.length && wanted[next] < end) {
      piece(wanted[next], entry.flags);
      let runEnd = wanted[next] + PAGE_BYTES;
      next++;
      while (next < wanted.length && wanted[next] === runEnd && runEnd < end) {
        runEnd += PAGE_BYTES;
        next++;
      }
      eager += (runEnd - at) / PAGE_BYTES;
      piece(runEnd, entry.flags & ~PE_LAZY);
    }
    piece(end, entry.flags);
  }
  return { map: { ...map, entries }, eager };
}

/** The most pages one merged entry holds (64 MiB: a 4 GiB array is 64 entries). */
export const MAX_MERGED_PAGES = 16384;

/**
 * `map` with every run of lazy entries that follow one another, in the address space and in the
 * pages file, with the same flags and inside one VMA of `vmas` (sorted), merged into one entry.
 * CRIU's dump cuts entries at its pipe buffers' size (1 MiB, 256 pages: a 4 GiB array is ~4,100
 * entries), and `criu lazy-pages` seeks every request from the first entry on (`uffd_seek_pages`:
 * `reset`, then `seek_pagemap`, a linear walk), so each fault above a large array costs a walk
 * over all of its entries (measured: 24 us per fault at 4 GiB, 2 us below it), and the background
 * transfer stops at each entry's end (1 MiB at most). A merged entry holds at most
 * MAX_MERGED_PAGES: merged whole, a 4 GiB array's entry made the daemon exit 1 during the restore,
 * its log saying nothing (2 restores of 2; it sizes a buffer by the longest range, and keeps
 * lengths in 32 bits in places), and the restore went on in full. The pages file is unchanged.
 * Returns the new map and how many entries it has fewer.
 */
export function withMergedLazyEntries(
  map: Pagemap,
  vmas: Array<{ start: number; end: number }>
): { map: Pagemap; merged: number } {
  const entries: PagemapEntry[] = [];
  let vma = 0;
  for (const entry of map.entries) {
    while (vma < vmas.length && vmas[vma].end <= entry.vaddr) {
      vma++;
    }
    const last = entries[entries.length - 1];
    const end = entry.vaddr + entry.pages * PAGE_BYTES;
    const joins =
      last !== undefined &&
      (entry.flags & (PE_LAZY | PE_PRESENT)) === (PE_LAZY | PE_PRESENT) &&
      last.flags === entry.flags &&
      last.vaddr + last.pages * PAGE_BYTES === entry.vaddr &&
      last.filePage + last.pages === entry.filePage &&
      last.pages + entry.pages <= MAX_MERGED_PAGES &&
      vma < vmas.length &&
      vmas[vma].start <= last.vaddr &&
      end <= vmas[vma].end;
    if (joins) {
      last.pages += entry.pages;
    } else {
      entries.push({ ...entry });
    }
  }
  return { map: { ...map, entries }, merged: map.entries.length - entries.length };
}

/**
 * The address ranges of a process's VMAs, from its `mm-PID.img` (`mm_entry.vmas = 14`, each a
 * `vma_entry { start = 1; end = 2; ... }`: images/mm.proto, images/vma.proto), sorted.
 */
export function parseVmas(data: Buffer): Array<{ start: number; end: number }> {
  if (data.length < MAGICS_BYTES + 4) {
    throw new Error('an mm image shorter than its magics and one message');
  }
  const length = data.readUInt32LE(MAGICS_BYTES);
  const mm = data.subarray(MAGICS_BYTES + 4, MAGICS_BYTES + 4 + length);
  const vmas: Array<{ start: number; end: number }> = [];
  for (const [field, value] of anyFields(mm)) {
    if (field === 14 && Buffer.isBuffer(value)) {
      const vma = new Map(anyFields(value).filter(([, v]) => typeof v === 'number')) as Map<
        number,
        number
      >;
      vmas.push({ start: vma.get(1) ?? 0, end: vma.get(2) ?? 0 });
    }
  }
  return vmas.sort((a, b) => a.start - b.start);
}

/** Every field of a protobuf message: varints as numbers, length-delimited ones as bytes. */
function anyFields(message: Buffer): Array<[number, number | Buffer]> {
  const fields: Array<[number, number | Buffer]> = [];
  for (let at = 0; at < message.length;) {
    const [key, afterKey] = varint(message, at, 0);
    const type = key & 7;
    const field = Math.floor(key / 8);
    if (type === 0) {
      const [value, next] = varint(message, afterKey, 0);
      fields.push([field, value]);
      at = next;
    } else if (type === 2) {
      const [bytes, start] = varint(message, afterKey, 0);
      fields.push([field, message.subarray(start, start + bytes)]);
      at = start + bytes;
    } else if (type === 1 || type === 5) {
      at = afterKey + (type === 1 ? 8 : 4);
    } else {
      throw new Error(`an mm image field of wire type ${type}`);
    }
  }
  return fields;
}

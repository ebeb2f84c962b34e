// CRIU's pagemap images (`pagemap-PID.img`): which pages of a process's address space its pages
// file (`pages-ID.img`) holds, and where. A page server fed from the chunk store maps each request
// (pid, vaddr, pages) through them to the pages file's offsets. The format, from CRIU's
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
  return { pagesId: messages[0].get(1) as number, entries, filePages };
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

// The pagemap parser and how a page request maps to the pages file, on images encoded as CRIU
// writes them (8 bytes of magics, then length-prefixed protobuf messages).

import {
  eagerRanges,
  fileRanges,
  PAGE_BYTES,
  parsePagemap,
  PE_LAZY,
  PE_PARENT,
  PE_PRESENT
} from '../criu-pagemap';
import { pagemapImage } from './pagemap-image';

const BASE = 0x7f0000000000;

describe('a pagemap image', () => {
  const image = pagemapImage(3, [
    { vaddr: 0x400000, pages: 2, flags: PE_PRESENT },
    { vaddr: BASE, pages: 4, flags: PE_PRESENT | PE_LAZY },
    { vaddr: BASE + 4 * PAGE_BYTES, pages: 3, flags: PE_PRESENT | PE_LAZY },
    { vaddr: BASE + 16 * PAGE_BYTES, pages: 5, flags: PE_PARENT },
    { vaddr: BASE + 32 * PAGE_BYTES, pages: 1, flags: PE_PRESENT | PE_LAZY }
  ]);

  it('gives its pages id, entries and where each one is in the pages file', () => {
    const map = parsePagemap(image);
    expect(map.pagesId).toBe(3);
    expect(map.filePages).toBe(10);
    expect(map.entries.map(entry => [entry.vaddr, entry.pages, entry.filePage])).toEqual([
      [0x400000, 2, 0],
      [BASE, 4, 2],
      [BASE + 4 * PAGE_BYTES, 3, 6],
      [BASE + 16 * PAGE_BYTES, 5, -1],
      [BASE + 32 * PAGE_BYTES, 1, 9]
    ]);
  });

  it('maps a request inside one entry, and one spanning two, to one range of the file', () => {
    const map = parsePagemap(image);
    expect(fileRanges(map, BASE + PAGE_BYTES, 2)).toEqual([{ page: 3, count: 2 }]);
    expect(fileRanges(map, BASE + 2 * PAGE_BYTES, 4)).toEqual([{ page: 4, count: 4 }]);
    expect(fileRanges(map, BASE + 32 * PAGE_BYTES, 1)).toEqual([{ page: 9, count: 1 }]);
  });

  it('refuses pages it does not hold: unmapped, in the parent, or past an entry', () => {
    const map = parsePagemap(image);
    expect(() => fileRanges(map, BASE + 7 * PAGE_BYTES, 1)).toThrow(/not in the image/);
    expect(() => fileRanges(map, BASE + 16 * PAGE_BYTES, 1)).toThrow(/not in the image/);
    expect(() => fileRanges(map, BASE + 6 * PAGE_BYTES, 2)).toThrow(/1 of a request for 2/);
    expect(() => fileRanges(map, 0x1000, 1)).toThrow(/not in the image/);
  });

  it('says which ranges criu restore reads itself (not lazy)', () => {
    expect(eagerRanges(parsePagemap(image))).toEqual([{ page: 0, count: 2 }]);
  });

  it('reads entries without flags as images before flags did (present, or in the parent)', () => {
    const map = parsePagemap(
      pagemapImage(1, [
        { vaddr: BASE, pages: 1 },
        { vaddr: BASE + PAGE_BYTES, pages: 1, inParent: true }
      ])
    );
    expect(map.entries.map(entry => entry.flags)).toEqual([PE_PRESENT, PE_PARENT]);
  });

  it('fails clearly on a cut-off image', () => {
    expect(() => parsePagemap(image.subarray(0, image.length - 3))).toThrow(/goes past the image/);
    expect(() => parsePagemap(Buffer.alloc(4))).toThrow(/shorter than its magics/);
    expect(() => parsePagemap(Buffer.alloc(8))).toThrow(/without its head/);
  });
});

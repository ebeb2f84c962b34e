// The prefetch's pieces: a pagemap image read, split at the hot pages and written back reads as
// the same pages with only those eager; the daemon's fault lines; the hint file and its copy of
// the image (real CRIU runs are in tests/integration/test_lazy_restore.py).

import { lstatSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  fileRanges,
  MAX_MERGED_PAGES,
  PAGE_BYTES,
  PE_LAZY,
  PE_PRESENT,
  parsePagemap,
  parseVmas,
  serializePagemap,
  withEagerPages,
  withMergedLazyEntries
} from '../criu-pagemap';
import {
  DEFAULT_PREFETCH,
  faultsInLog,
  formatHint,
  logsFaults,
  MAX_HINT_PAGES,
  mergeHints,
  parseHint,
  prefetchCopy,
  prefetchMode,
  readHint,
  smallVmaPages
} from '../criu-prefetch';

const BASE = 0x7f12_3456_0000;

/**
 * A pagemap image as CRIU writes it (protobuf-c, bytes by hand): magics, head { pages_id = 1 },
 * then entries { vaddr, compat_nr_pages = 0, flags, nr_pages }.
 */
function varint(value: number): number[] {
  const bytes = [];
  while (value >= 128) {
    bytes.push((value % 128) | 0x80);
    value = Math.floor(value / 128);
  }
  return [...bytes, value];
}

/**
 * An mm image as CRIU writes it: magics, one mm_entry with a varint field, a bytes field, a
 * fixed64 field and its vmas (field 14: vma_entry { start = 1; end = 2; pgoff = 3; fd = 8 }).
 */
function criuMm(vmas: Array<[number, number]>): Buffer {
  const body = [0x08, 0x2a, 0x7a, 0x02, 0x01, 0x02, 0x11, 1, 2, 3, 4, 5, 6, 7, 8];
  for (const [start, end] of vmas) {
    const vma = [0x08, ...varint(start), 0x10, ...varint(end), 0x18, 0x00, 0x40, 0x01];
    body.push(0x72, ...varint(vma.length), ...vma);
  }
  const length = Buffer.alloc(4);
  length.writeUInt32LE(body.length);
  return Buffer.concat([Buffer.from('5d7f5d3dd8420ba2', 'hex'), length, Buffer.from(body)]);
}

function criuPagemap(entries: Array<[number, number, number]>): Buffer {
  const message = (body: number[]) => {
    const length = Buffer.alloc(4);
    length.writeUInt32LE(body.length);
    return Buffer.concat([length, Buffer.from(body)]);
  };
  const parts = [Buffer.from('5d7f5d3dd8420ba2', 'hex'), message([0x08, 0x01])];
  for (const [vaddr, pages, flags] of entries) {
    parts.push(message([0x08, ...varint(vaddr), 0x10, 0x00, 0x20, flags, 0x28, ...varint(pages)]));
  }
  return Buffer.concat(parts);
}

const LAZY = PE_LAZY | PE_PRESENT;
const IMAGE = criuPagemap([
  [BASE, 4, PE_PRESENT],
  [BASE + 16 * PAGE_BYTES, 10, LAZY],
  [BASE + 40 * PAGE_BYTES, 3, LAZY]
]);

describe('pagemap images', () => {
  it('read as CRIU wrote them, and written back byte for byte', () => {
    const map = parsePagemap(IMAGE);
    expect(map.pagesId).toBe(1);
    expect(
      map.entries.map(entry => [entry.vaddr, entry.pages, entry.flags, entry.filePage])
    ).toEqual([
      [BASE, 4, PE_PRESENT, 0],
      [BASE + 16 * PAGE_BYTES, 10, LAZY, 4],
      [BASE + 40 * PAGE_BYTES, 3, LAZY, 14]
    ]);
    expect(serializePagemap(map).equals(IMAGE)).toBe(true);
  });

  it('split at the hot pages: read → split → write → read keeps every page in the same place', () => {
    const hot = [
      BASE, // already eager: unchanged
      BASE + 16 * PAGE_BYTES, // an entry's first page
      BASE + 20 * PAGE_BYTES, // a run of two in its middle
      BASE + 21 * PAGE_BYTES,
      BASE + 25 * PAGE_BYTES, // its last page
      BASE + 30 * PAGE_BYTES // in no entry: ignored
    ];
    const { map, eager } = withEagerPages(parsePagemap(IMAGE), hot);
    expect(eager).toBe(4);
    const again = parsePagemap(serializePagemap(map));
    expect(again.filePages).toBe(17);
    expect(
      again.entries.map(entry => [entry.vaddr, entry.pages, entry.flags, entry.filePage])
    ).toEqual([
      [BASE, 4, PE_PRESENT, 0],
      [BASE + 16 * PAGE_BYTES, 1, PE_PRESENT, 4],
      [BASE + 17 * PAGE_BYTES, 3, LAZY, 5],
      [BASE + 20 * PAGE_BYTES, 2, PE_PRESENT, 8],
      [BASE + 22 * PAGE_BYTES, 3, LAZY, 10],
      [BASE + 25 * PAGE_BYTES, 1, PE_PRESENT, 13],
      [BASE + 40 * PAGE_BYTES, 3, LAZY, 14]
    ]);
  });

  it('is unchanged when no hot page is in a lazy entry', () => {
    const { map, eager } = withEagerPages(parsePagemap(IMAGE), [
      BASE + PAGE_BYTES,
      BASE + 99 * PAGE_BYTES
    ]);
    expect(eager).toBe(0);
    expect(serializePagemap(map).equals(IMAGE)).toBe(true);
  });
});

describe('lazy entries merged for the daemon', () => {
  // As CRIU's dump cuts a large array: entries of at most 256 pages (its 1 MiB pipe buffers).
  const array = BASE + 64 * PAGE_BYTES;
  const cut = criuPagemap([
    [BASE, 4, PE_PRESENT],
    [BASE + 4 * PAGE_BYTES, 4, PE_PRESENT],
    [array, 256, LAZY],
    [array + 256 * PAGE_BYTES, 256, LAZY],
    [array + 512 * PAGE_BYTES, 100, LAZY],
    // A hole in the address space: not merged across it.
    [array + 640 * PAGE_BYTES, 10, LAZY],
    // The next VMA begins here: not merged across its start.
    [array + 650 * PAGE_BYTES, 6, LAZY]
  ]);
  const vmas = [
    { start: BASE, end: BASE + 8 * PAGE_BYTES },
    { start: array, end: array + 650 * PAGE_BYTES },
    { start: array + 650 * PAGE_BYTES, end: array + 700 * PAGE_BYTES }
  ];

  it('are one entry per run that follows on in memory and in the pages file, inside one VMA', () => {
    const { map, merged } = withMergedLazyEntries(parsePagemap(cut), vmas);
    expect(merged).toBe(2);
    const again = parsePagemap(serializePagemap(map));
    expect(
      again.entries.map(entry => [entry.vaddr, entry.pages, entry.flags, entry.filePage])
    ).toEqual([
      // Eager entries are criu restore's own: left as they are.
      [BASE, 4, PE_PRESENT, 0],
      [BASE + 4 * PAGE_BYTES, 4, PE_PRESENT, 4],
      [array, 612, LAZY, 8],
      [array + 640 * PAGE_BYTES, 10, LAZY, 620],
      [array + 650 * PAGE_BYTES, 6, LAZY, 630]
    ]);
    // Every page is where it was in the pages file.
    const before = parsePagemap(cut);
    for (const page of [0, 255, 256, 511, 512, 611, 640, 649, 650, 655]) {
      const address = array + page * PAGE_BYTES;
      expect(fileRanges(again, address, 1)).toEqual(fileRanges(before, address, 1));
    }
  });

  it('are merged into entries of at most MAX_MERGED_PAGES (a 4 GiB array whole broke the daemon)', () => {
    const big = BASE + 2 ** 30;
    const pieces = 2 * (MAX_MERGED_PAGES / 256) + 1;
    const entries: Array<[number, number, number]> = [];
    for (let piece = 0; piece < pieces; piece++) {
      entries.push([big + piece * 256 * PAGE_BYTES, 256, LAZY]);
    }
    const { map } = withMergedLazyEntries(parsePagemap(criuPagemap(entries)), [
      { start: big, end: big + pieces * 256 * PAGE_BYTES }
    ]);
    expect(map.entries.map(entry => entry.pages)).toEqual([
      MAX_MERGED_PAGES,
      MAX_MERGED_PAGES,
      256
    ]);
  });

  it('are not merged where the hot pages were split off, nor without the VMAs', () => {
    const split = withEagerPages(parsePagemap(cut), [array + 300 * PAGE_BYTES]);
    const { map } = withMergedLazyEntries(split.map, vmas);
    expect(map.entries.slice(2, 5).map(entry => [entry.vaddr, entry.pages, entry.flags])).toEqual([
      [array, 300, LAZY],
      [array + 300 * PAGE_BYTES, 1, PE_PRESENT],
      [array + 301 * PAGE_BYTES, 311, LAZY]
    ]);
    expect(withMergedLazyEntries(parsePagemap(cut), []).merged).toBe(0);
  });

  it('in the work copy, whose pagemap has them merged when the image has its mm file', async () => {
    const folder = mkdtempSync(path.join(os.tmpdir(), 'criu-prefetch-test-'));
    try {
      const image = path.join(folder, 'image');
      await fs.mkdir(image);
      writeFileSync(path.join(image, 'pagemap-1.img'), cut);
      writeFileSync(
        path.join(image, 'mm-1.img'),
        criuMm(vmas.map(vma => [vma.start, vma.end] as [number, number]))
      );
      const copy = path.join(folder, 'copy');
      expect(await prefetchCopy(image, copy, new Map())).toBe(0);
      expect(lstatSync(path.join(copy, 'mm-1.img')).isSymbolicLink()).toBe(true);
      expect(parsePagemap(readFileSync(path.join(copy, 'pagemap-1.img'))).entries).toHaveLength(5);
      expect(readFileSync(path.join(image, 'pagemap-1.img')).equals(cut)).toBe(true);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });
});

describe('prefetch hints', () => {
  let folder: string;
  beforeEach(() => {
    folder = mkdtempSync(path.join(os.tmpdir(), 'criu-prefetch-test-'));
  });
  afterEach(() => rmSync(folder, { recursive: true, force: true }));

  it('come from the daemon\'s "#PF at" lines, per process, in order', () => {
    const log = [
      '(00.010000) 1-7: Found 12 VMAs in image',
      `(00.020000) 1-7: #PF at 0x${(BASE + PAGE_BYTES).toString(16)}`,
      '(00.020100) 1-7: uffd_copy: 0x7f1234561000/4096',
      `(00.030000) 42-9: #PF at 0x${BASE.toString(16)}`,
      `(00.040000) 1-7: #PF at 0x${BASE.toString(16)}`
    ].join('\n');
    expect(faultsInLog(log)).toEqual(
      new Map([
        [1, [BASE + PAGE_BYTES, BASE]],
        [42, [BASE]]
      ])
    );
  });

  it('round-trip as sorted ranges, and merge older pages first without repeats', () => {
    const hot = new Map([
      [1, [BASE + 2 * PAGE_BYTES, BASE, BASE + PAGE_BYTES, BASE + 9 * PAGE_BYTES]]
    ]);
    const text = formatHint(hot);
    expect(JSON.parse(text).pages).toEqual({
      '1': [
        [BASE, 3],
        [BASE + 9 * PAGE_BYTES, 1]
      ]
    });
    expect(parseHint(text).get(1)).toEqual([
      BASE,
      BASE + PAGE_BYTES,
      BASE + 2 * PAGE_BYTES,
      BASE + 9 * PAGE_BYTES
    ]);
    const merged = mergeHints(new Map([[1, [BASE]]]), new Map([[1, [BASE + PAGE_BYTES, BASE]]]));
    expect(merged.get(1)).toEqual([BASE, BASE + PAGE_BYTES]);
  });

  it.each([
    ['not JSON', 'garbage'],
    ['another format', '{"format": "x", "pages": {}}'],
    ['a bad pid', '{"format": "kernel-checkpoint-lazy-hint/1", "pages": {"one": []}}'],
    ['an unaligned page', '{"format": "kernel-checkpoint-lazy-hint/1", "pages": {"1": [[12, 1]]}}'],
    [
      'too many pages',
      '{"format": "kernel-checkpoint-lazy-hint/1", "pages": {"1": [[4096, 99999]]}}'
    ]
  ])('with %s are refused', (_what, text) => {
    expect(() => parseHint(text)).toThrow();
  });

  it('that are garbage, beside an image, are ignored (null)', async () => {
    const image = path.join(folder, 'image');
    await fs.mkdir(image);
    expect(await readHint(image)).toBeNull();
    writeFileSync(path.join(folder, 'lazy-hint.json'), '{"format": 1}');
    expect(await readHint(image)).toBeNull();
  });

  it('give a work copy: links to the image, its pagemap rewritten, the image untouched', async () => {
    const image = path.join(folder, 'image');
    await fs.mkdir(image);
    writeFileSync(path.join(image, 'pagemap-1.img'), IMAGE);
    writeFileSync(path.join(image, 'pages-1.img'), Buffer.alloc(17 * PAGE_BYTES));
    writeFileSync(path.join(image, 'core-1.img'), 'core');
    const copy = path.join(folder, 'copy');
    const eager = await prefetchCopy(image, copy, new Map([[1, [BASE + 40 * PAGE_BYTES]]]));
    expect(eager).toBe(1);
    expect(lstatSync(path.join(copy, 'pages-1.img')).isSymbolicLink()).toBe(true);
    expect(lstatSync(path.join(copy, 'core-1.img')).isSymbolicLink()).toBe(true);
    expect(lstatSync(path.join(copy, 'pagemap-1.img')).mode & 0o777).toBe(0o600);
    expect(lstatSync(copy).mode & 0o777).toBe(0o700);
    const rewritten = parsePagemap(readFileSync(path.join(copy, 'pagemap-1.img')));
    expect(rewritten.entries[2]).toEqual({
      vaddr: BASE + 40 * PAGE_BYTES,
      pages: 1,
      flags: PE_PRESENT,
      filePage: 14
    });
    expect(readFileSync(path.join(image, 'pagemap-1.img')).equals(IMAGE)).toBe(true);
  });
});

describe('the fault log (the daemon at -v4)', () => {
  const full = new Map([
    [1, Array.from({ length: MAX_HINT_PAGES }, (_, page) => BASE + page * PAGE_BYTES)]
  ]);
  it('is kept while the hint has room, and not once it is full (more faults would be dropped)', () => {
    expect(logsFaults({}, null)).toBe(true);
    expect(logsFaults({}, new Map([[1, [BASE]]]))).toBe(true);
    expect(logsFaults({}, full)).toBe(false);
  });

  it('is off without the hint mode of prefetch', () => {
    expect(logsFaults({ KERNEL_CHECKPOINT_PREFETCH: '0' }, null)).toBe(false);
    expect(logsFaults({ KERNEL_CHECKPOINT_PREFETCH: 'small' }, null)).toBe(false);
    expect(logsFaults({ KERNEL_CHECKPOINT_PREFETCH: 'hint' }, null)).toBe(true);
    expect(prefetchMode({ KERNEL_CHECKPOINT_PREFETCH: '1' })).toBe('hint');
    expect(prefetchMode({})).toBe(DEFAULT_PREFETCH);
  });
});

describe('the small-VMA alternative', () => {
  it('makes eager the lazy pages of VMAs up to 16 MiB, not those of bigger ones', async () => {
    const folder = mkdtempSync(path.join(os.tmpdir(), 'criu-prefetch-test-'));
    try {
      const big = BASE + 64 * PAGE_BYTES;
      const mm = criuMm([
        [big, big + 32 * 2 ** 20],
        [BASE, BASE + 48 * PAGE_BYTES]
      ]);
      expect(parseVmas(mm)).toEqual([
        { start: BASE, end: BASE + 48 * PAGE_BYTES },
        { start: big, end: big + 32 * 2 ** 20 }
      ]);
      writeFileSync(path.join(folder, 'mm-1.img'), mm);
      writeFileSync(
        path.join(folder, 'pagemap-1.img'),
        criuPagemap([
          [BASE, 2, PE_PRESENT],
          [BASE + 16 * PAGE_BYTES, 3, LAZY],
          [big, 5, LAZY]
        ])
      );
      expect(await smallVmaPages(folder)).toEqual(
        new Map([[1, [16, 17, 18].map(page => BASE + page * PAGE_BYTES)]])
      );
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });
});

// Encodes a pagemap image as CRIU writes it, for tests.

export interface EntrySpec {
  vaddr: number;
  pages: number;
  flags?: number;
  inParent?: boolean;
}

function varint(value: number): number[] {
  const bytes: number[] = [];
  let left = value;
  while (left >= 128) {
    bytes.push((left % 128) | 0x80);
    left = Math.floor(left / 128);
  }
  bytes.push(left);
  return bytes;
}

function message(fields: Array<[number, number]>): Buffer {
  const body = Buffer.from(
    fields.flatMap(([field, value]) => [...varint(field * 8), ...varint(value)])
  );
  const length = Buffer.alloc(4);
  length.writeUInt32LE(body.length);
  return Buffer.concat([length, body]);
}

export function pagemapImage(pagesId: number, entries: EntrySpec[]): Buffer {
  const magics = Buffer.from([0x19, 0x43, 0x56, 0x54, 0x12, 0x34, 0x56, 0x78]);
  return Buffer.concat([
    magics,
    message([[1, pagesId]]),
    ...entries.map(entry =>
      message([
        [1, entry.vaddr],
        [5, entry.pages],
        ...(entry.inParent ? ([[3, 1]] as Array<[number, number]>) : []),
        ...(entry.flags !== undefined ? ([[4, entry.flags]] as Array<[number, number]>) : [])
      ])
    )
  ]);
}

/** An mm image with these VMAs ([start, end) each) and no other field. */
export function mmImage(vmas: Array<{ start: number; end: number }>): Buffer {
  const magics = Buffer.from([0x5d, 0x7f, 0x5d, 0x3d, 0xd8, 0x42, 0x0b, 0xa2]);
  const body = Buffer.concat(
    vmas.map(vma => {
      const entry = message([
        [1, vma.start],
        [2, vma.end]
      ]).subarray(4);
      // Field 14, length-delimited.
      return Buffer.from([(14 << 3) | 2, ...varint(entry.length), ...entry]);
    })
  );
  const length = Buffer.alloc(4);
  length.writeUInt32LE(body.length);
  return Buffer.concat([magics, length, body]);
}

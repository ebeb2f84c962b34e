// What naming and checking one 4 KiB chunk costs in Node, per call, for the xxh3-128 the chunk
// store uses (hash-wasm) beside native addons that compute the same digest. A restore checks
// every chunk it reads one call at a time, so the per-call cost, not a hash's throughput on large
// buffers, is what a served restore pays (bench/README.md, "PAGES SERVED FROM CHUNKS").
//
//   node bench/chunk_hash.mjs [--mib 64] [--rounds 5]
//
// The native addons are not dependencies of the product: each row is measured only when the
// package is installed (`npm i --no-save xxhash-addon@2 @node-rs/xxhash@1`), and says so when not.

import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const arg = (name, fallback) => {
  const at = process.argv.indexOf(name);
  return at === -1 ? fallback : Number(process.argv[at + 1]);
};
const mib = arg('--mib', 64);
const rounds = arg('--rounds', 5);
const CHUNK = 4096;
const data = randomBytes(mib * 2 ** 20);
const chunks = Array.from({ length: data.length / CHUNK }, (_, i) =>
  data.subarray(i * CHUNK, (i + 1) * CHUNK)
);

/** Each candidate: a function from a chunk to its 16-byte digest, or why it was not measured. */
async function candidates() {
  const found = [];
  const { createXXHash128 } = require('hash-wasm');
  const wasm = await createXXHash128();
  found.push({
    name: "hash-wasm xxh3-128 (the store's)",
    digest: chunk => {
      wasm.init();
      wasm.update(chunk);
      return wasm.digest('binary');
    },
    whole: buffer => {
      wasm.init();
      wasm.update(buffer);
      return wasm.digest('binary');
    }
  });
  try {
    const { XXHash128 } = require('xxhash-addon');
    found.push({
      name: 'xxhash-addon 2 XXHash128 (native)',
      digest: chunk => XXHash128.hash(chunk),
      whole: buffer => XXHash128.hash(buffer)
    });
  } catch {
    found.push({ name: 'xxhash-addon 2 (native)', missing: 'not installed' });
  }
  try {
    const { xxh3 } = require('@node-rs/xxhash');
    found.push({
      name: '@node-rs/xxhash 1 xxh3.xxh128 (native)',
      digest: chunk => {
        const value = xxh3.xxh128(chunk);
        const out = Buffer.alloc(16);
        out.writeBigUInt64BE(value >> 64n, 0);
        out.writeBigUInt64BE(value & 0xffffffffffffffffn, 8);
        return out;
      },
      whole: buffer => xxh3.xxh128(buffer)
    });
  } catch {
    found.push({ name: '@node-rs/xxhash 1 (native)', missing: 'not installed' });
  }
  return found;
}

function best(fn) {
  let fastest = Infinity;
  for (let round = 0; round < rounds; round++) {
    const started = process.hrtime.bigint();
    fn();
    fastest = Math.min(fastest, Number(process.hrtime.bigint() - started));
  }
  return fastest;
}

const found = await candidates();
const reference = found[0].digest(chunks[0]);
console.log(
  `${mib} MiB of random bytes, ${chunks.length} chunks of 4 KiB, best of ${rounds} rounds\n`
);
console.log(
  "| hash | same digest as the store's | per 4 KiB chunk (µs) | one call over the whole buffer (GB/s) | share of a chunk's cost that is the call |"
);
console.log('|---|---|---:|---:|---:|');
for (const candidate of found) {
  if (candidate.missing) {
    console.log(`| ${candidate.name} | skipped: ${candidate.missing} | | | |`);
    continue;
  }
  const same = Buffer.from(candidate.digest(chunks[0])).equals(Buffer.from(reference));
  const perChunk =
    best(() => {
      for (const chunk of chunks) {
        candidate.digest(chunk);
      }
    }) / chunks.length;
  const wholeNs = best(() => candidate.whole(data));
  const hashOnly = (wholeNs / data.length) * CHUNK;
  console.log(
    `| ${candidate.name} | ${same ? 'yes' : 'NO'} | ${(perChunk / 1000).toFixed(2)} | ` +
      `${(data.length / wholeNs).toFixed(1)} | ${Math.max(0, 1 - hashOnly / perChunk).toFixed(2)} |`
  );
}

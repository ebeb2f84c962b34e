// Times the chunk store (kernel-plugin/store/chunks.ts) on real images made by
// bench/dedup_states.py: ingesting a first and a second checkpoint, and reassembling the second
// one's files (into a folder on the image store's disk, and into /dev/shm), beside reading the
// image as a restore does today and copying it.
//
//   node bench/dedup_speed.mjs /tmp/dd/criu-numpy [workdir] [--zstd]   (--zstd: frames at level 1)

import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';

import { loadChunkStore } from './dedup_bundle.mjs';

const { bundle, module } = loadChunkStore(undefined, 'chunks-speed');
const { ChunkStore, zstdCodec } = module;

const args = process.argv.slice(2).filter(arg => arg !== '--zstd');
const series = args[0];
const work = args[1] ?? path.join(path.dirname(series), 'speed');
const order = (await fs.readFile(path.join(series, 'order.txt'), 'utf8'))
  .split('\n')
  .filter(Boolean);

async function files(dir, prefix = '') {
  const found = [];
  for (const entry of await fs.readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const relative = path.join(prefix, entry.name);
    if (entry.isDirectory()) {
      found.push(...(await files(dir, relative)));
    } else if (entry.isFile()) {
      found.push(relative);
    }
  }
  return found.sort();
}

async function timed(what, fn) {
  const started = process.hrtime.bigint();
  const value = await fn();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(`${what}: ${seconds.toFixed(3)} s`);
  return value;
}

async function readAll(dir) {
  const block = Buffer.allocUnsafe(4 << 20);
  let bytes = 0;
  for (const name of await files(dir)) {
    const handle = await fs.open(path.join(dir, name), 'r');
    for (;;) {
      const { bytesRead } = await handle.read(block, 0, block.length, null);
      if (bytesRead === 0) {
        break;
      }
      bytes += bytesRead;
    }
    await handle.close();
  }
  return bytes;
}

async function ingestImage(store, dir) {
  const session = await store.begin({ durable: true });
  const lists = {};
  for (const name of await files(dir)) {
    lists[name] = await session.ingest(path.join(dir, name));
  }
  await session.finish();
  await session.close();
  return lists;
}

async function materializeImage(store, lists, dest) {
  await fs.mkdir(dest, { recursive: true, mode: 0o700 });
  for (const [name, list] of Object.entries(lists)) {
    await fs.mkdir(path.dirname(path.join(dest, name)), { recursive: true, mode: 0o700 });
    await store.materialize(list, path.join(dest, name));
  }
}

await fs.rm(work, { recursive: true, force: true });
const store = new ChunkStore(
  path.join(work, 'chunks'),
  process.argv.includes('--zstd') ? zstdCodec() : null
);
const first = path.join(series, order[0], 'image');
const second = path.join(series, order[1], 'image');
const bytes = await timed('read the second image (as a restore reads it today, warm)', () =>
  readAll(second)
);
console.log(`  ${(bytes / 2 ** 30).toFixed(3)} GiB`);
await timed('read it again (warm)', () => readAll(second));
await readAll(first);
await timed('ingest the first image (all new, fsync)', () => ingestImage(store, first));
const lists = await timed('ingest the second image (dedup)', () => ingestImage(store, second));
const usage = await store.usage({ second: Object.values(lists) });
console.log(`  store ${(usage.totalBytes / 2 ** 30).toFixed(3)} GiB`);
const onDisk = path.join(work, 'materialized');
const inShm = path.join('/dev/shm', `kc-speed-${process.pid}`);
try {
  await timed('materialize the second image on disk', () => materializeImage(store, lists, onDisk));
  await timed('materialize it again on disk (over the same files)', () =>
    materializeImage(store, lists, onDisk)
  );
  await timed('materialize it into /dev/shm', () => materializeImage(store, lists, inShm));
  await fs.rm(inShm, { recursive: true, force: true });
  await timed('cp -r of the image into /dev/shm (a copy, for scale)', () =>
    execFileSync('cp', ['-r', second, inShm])
  );
} finally {
  await fs.rm(inShm, { recursive: true, force: true });
  await fs.rm(work, { recursive: true, force: true });
  await fs.rm(bundle, { force: true });
}

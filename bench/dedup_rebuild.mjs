// Times rebuilding an image's files from the chunk store (ChunkStore.materialize), the step a
// restore of a chunk image adds, beside what a restore of a whole image reads, in the same run.
//
// The series is synthetic but shaped like a real one (bench/dedup_bench.py's numpy state: one
// page file of random floats, then small edits): a file of random bytes, then `--edits` copies,
// each with 1000 random pages changed from the one before, every one ingested as its own image.
// The newest image is then ~2 runs per changed page over as many packs as images; the oldest is
// one long run. Each tree given with --tree (a checkout of this repository; the first is the
// baseline) has its kernel-plugin/store/chunks.ts bundled and timed on the same store, with its
// hash workers and without them (every chunk checked on the main thread), in turn.
//
//   node bench/dedup_rebuild.mjs [--mib 1024] [--edits 10] [--zstd] [--tree DIR]... [--repeat 3]

import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { loadChunkStore } from './dedup_bundle.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.join(here, '..');

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 ? process.argv[at + 1] : fallback;
}
const mib = Number(option('--mib', '1024'));
const edits = Number(option('--edits', '10'));
const repeat = Number(option('--repeat', '3'));
const zstd = process.argv.includes('--zstd');
const trees = process.argv.flatMap((arg, i) => (arg === '--tree' ? [process.argv[i + 1]] : []));
if (trees.length === 0) {
  trees.push(repo);
}

/** Wall seconds, and CPU seconds of the whole process (every thread: libuv's pool too). */
let lastCpu = 0;
async function seconds(fn) {
  const started = process.hrtime.bigint();
  const cpu = process.cpuUsage();
  await fn();
  const used = process.cpuUsage(cpu);
  lastCpu = (used.user + used.system) / 1e6;
  return Number(process.hrtime.bigint() - started) / 1e9;
}

async function readAll(file) {
  const block = Buffer.allocUnsafe(4 << 20);
  const handle = await fs.open(file, 'r');
  try {
    for (;;) {
      const { bytesRead } = await handle.read(block, 0, block.length, null);
      if (bytesRead === 0) {
        break;
      }
    }
  } finally {
    await handle.close();
  }
}

const base = await fs.mkdtemp(path.join(os.homedir(), 'kc-rebuild-'));
const shm = await fs.mkdtemp('/dev/shm/kc-rebuild-');
const loaded = trees.map((tree, i) => ({ tree, ...loadChunkStore(tree, `rebuild-${i}`) }));
try {
  const { ChunkStore, zstdCodec } = loaded[0].module;
  const store = new ChunkStore(path.join(base, 'chunks'), zstd ? zstdCodec() : null);
  // The image files: written once, ingested in turn, the newest kept for the "whole" baseline.
  const file = path.join(base, 'pages.img');
  const content = randomBytes(mib << 20);
  const lists = [];
  for (let image = 0; image <= edits; image++) {
    if (image > 0) {
      for (let k = 0; k < 1000; k++) {
        randomBytes(4096).copy(content, randomInt(content.length / 4096) * 4096);
      }
    }
    await fs.writeFile(file, content);
    const session = await store.begin({ durable: false });
    lists.push(await session.ingest(file));
    await session.finish();
    await session.close();
  }
  const runs = list => list.runs.length;
  console.log(
    `${mib} MiB, ${edits + 1} images${zstd ? ', zstd' : ''}: newest ${runs(lists[edits])} runs ` +
      `over ${new Set(lists[edits].runs.map(r => r.pack)).size} packs, oldest ${runs(lists[0])}; ` +
      `load ${os.loadavg()[0].toFixed(1)}`
  );
  const rows = [];
  // Best of `repeat` by wall time, with the CPU seconds of that run (less moved by other load).
  const best = async fn => {
    let found = [Infinity, 0];
    for (let i = 0; i < repeat; i++) {
      const time = await fn();
      if (time < found[0]) {
        found = [time, lastCpu];
      }
    }
    return found;
  };
  const whole = await best(() => seconds(() => readAll(file)));
  rows.push(['read the whole image (what CRIU reads, warm)', whole]);
  const copy = await best(async () => {
    const dest = path.join(shm, 'copy');
    const started = process.hrtime.bigint();
    execFileSync('cp', [file, dest]);
    const time = Number(process.hrtime.bigint() - started) / 1e9;
    // cp's own CPU time is not this process's: read from /proc/self/stat's children fields.
    lastCpu = NaN;
    await fs.rm(dest);
    return time;
  });
  rows.push(['cp of the whole image into /dev/shm', copy]);
  for (const [i, { tree, module }] of loaded.entries()) {
    const reader = new module.ChunkStore(store.root, zstd ? module.zstdCodec() : null);
    for (const [which, list] of [
      ['newest', lists[edits]],
      ['oldest', lists[0]]
    ]) {
      // With the hash workers (where the tree has them) and with every chunk checked on this
      // thread (KERNEL_CHECKPOINT_HASH_WORKERS=0, read at each rebuild), taken in turn.
      const ways = { workers: [Infinity, 0], inline: [Infinity, 0] };
      for (let round = 0; round < repeat; round++) {
        for (const way of Object.keys(ways)) {
          process.env.KERNEL_CHECKPOINT_HASH_WORKERS = way === 'inline' ? '0' : '1';
          const dest = path.join(shm, 'rebuilt');
          const time = await seconds(() => reader.materialize(list, dest));
          await fs.rm(dest);
          if (time < ways[way][0]) {
            ways[way] = [time, lastCpu];
          }
        }
      }
      for (const [way, time] of Object.entries(ways)) {
        rows.push([
          `materialize ${which} into /dev/shm, ${way} (${i === 0 ? 'baseline ' : ''}${tree})`,
          time
        ]);
      }
    }
  }
  console.log('\n| step | best s | its CPU s | x read whole | x cp whole |');
  console.log('|---|---:|---:|---:|---:|');
  for (const [what, [time, cpu]] of rows) {
    console.log(
      `| ${what} | ${time.toFixed(3)} | ${Number.isNaN(cpu) ? '-' : cpu.toFixed(3)} | ` +
        `${(time / whole[0]).toFixed(2)} | ${(time / copy[0]).toFixed(2)} |`
    );
  }
} finally {
  await fs.rm(base, { recursive: true, force: true });
  await fs.rm(shm, { recursive: true, force: true });
  for (const { bundle } of loaded) {
    await fs.rm(bundle, { force: true });
  }
}

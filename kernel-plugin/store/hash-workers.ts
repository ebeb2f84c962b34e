// Checks chunks against their hashes on worker threads, so that a rebuild's hashing (0.4-0.7 s of
// CPU per GiB of 4 KiB chunks in hash-wasm) runs on the other cores beside the reads, the writes
// and this thread's own work, rather than on this thread before each write
// (bench/README.md, "Rebuilding a chunk image's files").
//
// The bytes are never copied to a worker: they are read into SharedArrayBuffers, which a worker
// reads in place; a job names where its chunks lie and the hashes they must have, and the answer
// is the first chunk that does not match (or none). Where workers cannot start (hash-wasm not
// found beside the code, as in a bundle that does not ship it), `HashWorkers.shared()` is null
// and the caller checks on its own thread, as before.

import os from 'node:os';
import { Worker } from 'node:worker_threads';

/** One run of chunks to check: `count` chunks from file chunk `first` on, at `offset`. */
export interface HashRun {
  offset: number;
  first: number;
  count: number;
  /** Bytes of the run's last chunk (a file's last chunk may be short). */
  lastLength: number;
}

/** At most this many workers: past it the writes into tmpfs, not the hashes, set the pace. */
const MAX_WORKERS = 4;

// The worker's code, run with `eval` (the supervisor is one bundled file: there is no worker
// script beside it). It loads hash-wasm from the path the parent resolved.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createXXHash128 } = require(workerData.hashWasm);
const CHUNK = ${4096};
const HASH = ${16};
createXXHash128().then(h => {
  parentPort.on('message', ({ id, bytes, runs, expected }) => {
    const view = new Uint8Array(bytes);
    const want = new Uint8Array(expected);
    let bad = -1;
    let e = 0;
    outer: for (const run of runs) {
      for (let k = 0; k < run.count; k++, e += HASH) {
        const start = run.offset + k * CHUNK;
        const length = k === run.count - 1 ? run.lastLength : CHUNK;
        h.init();
        h.update(view.subarray(start, start + length));
        const got = h.digest('binary');
        for (let i = 0; i < HASH; i++) {
          if (got[i] !== want[e + i]) {
            bad = run.first + k;
            break outer;
          }
        }
      }
    }
    parentPort.postMessage({ id, bad });
  });
  parentPort.postMessage({ ready: true });
});
`;

interface Pending {
  resolve(bad: number): void;
  reject(error: Error): void;
}

/** A few worker threads that check chunks in SharedArrayBuffers against their hashes. */
export class HashWorkers {
  private static instance: HashWorkers | null | undefined;

  private readonly workers: Worker[] = [];
  private readonly busy: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private broken: Error | null = null;
  /** Chunks handed to the workers so far (what a test checks they were used for). */
  chunksChecked = 0;

  /**
   * The process's workers, started on first use and kept (unref'd: they never keep the process
   * alive); null where they cannot run here.
   */
  static shared(): HashWorkers | null {
    // Read each time: a bench compares both ways in one process.
    if (process.env.KERNEL_CHECKPOINT_HASH_WORKERS === '0') {
      return null;
    }
    if (HashWorkers.instance === undefined) {
      HashWorkers.instance = HashWorkers.start();
    }
    return HashWorkers.instance;
  }

  private static start(): HashWorkers | null {
    let hashWasm: string;
    try {
      hashWasm = require.resolve('hash-wasm');
    } catch {
      return null;
    }
    const count = Math.max(
      1,
      Math.min(MAX_WORKERS, os.availableParallelism?.() ?? os.cpus().length)
    );
    return new HashWorkers(hashWasm, count);
  }

  private constructor(hashWasm: string, count: number) {
    for (let i = 0; i < count; i++) {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { hashWasm } });
      worker.on('message', (message: { id?: number; bad?: number }) => {
        if (message.id === undefined) {
          return;
        }
        const job = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (--this.busy[i] === 0) {
          worker.unref();
        }
        job?.resolve(message.bad as number);
      });
      worker.on('error', error => this.fail(error));
      worker.on('exit', code => this.fail(new Error(`a hash worker exited (${code})`)));
      // Idle workers never keep the process alive (a busy one does: its answer is awaited).
      worker.unref();
      this.workers.push(worker);
      this.busy.push(0);
    }
  }

  /**
   * Checks `runs` of the chunks in `bytes` (which must lie in a SharedArrayBuffer) against
   * `expected`, their hashes one after the other; resolves to the file chunk of the first
   * mismatch, or -1.
   */
  check(bytes: Uint8Array, runs: HashRun[], expected: Buffer): Promise<number> {
    if (this.broken) {
      return Promise.reject(this.broken);
    }
    if (!(bytes.buffer instanceof SharedArrayBuffer)) {
      return Promise.reject(new TypeError('hash workers read SharedArrayBuffers only'));
    }
    let least = 0;
    for (let i = 1; i < this.workers.length; i++) {
      if (this.busy[i] < this.busy[least]) {
        least = i;
      }
    }
    const id = this.nextId++;
    this.chunksChecked += runs.reduce((sum, run) => sum + run.count, 0);
    if (this.busy[least]++ === 0) {
      this.workers[least].ref();
    }
    const base = bytes.byteOffset;
    const job = {
      id,
      bytes: bytes.buffer,
      runs: runs.map(run => ({ ...run, offset: base + run.offset })),
      expected: Uint8Array.from(expected).buffer
    };
    return new Promise<number>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.workers[least].postMessage(job, [job.expected]);
    });
  }

  /** A worker that fails fails every job waiting, and no later one starts. */
  private fail(error: Error): void {
    this.broken ??= error;
    for (const job of this.pending.values()) {
      job.reject(error);
    }
    this.pending.clear();
  }
}

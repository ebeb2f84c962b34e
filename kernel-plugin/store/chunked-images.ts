// How the image store uses its chunk store (chunks.ts): the settings that choose whether images
// are kept as chunks and how chunks are compressed, and where a chunk image's files are rebuilt
// for a restore. Why this design: docs/architecture.md ("Images are stored once per chunk").

import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { PREFETCH_SETTING } from '../engines/criu-prefetch';
import { processAlive, type Codec } from './chunks';
import { DEFAULT_ZSTD_LEVEL, zstdCodec } from './zstd';

export type Compression = 'zstd' | 'none';
export const COMPRESSIONS: readonly Compression[] = ['zstd', 'none'];

export interface ChunkingOptions {
  /**
   * Keep images as shared chunks once written: KERNEL_CHECKPOINT_DEDUP=1. Opt-in for now: a
   * lazy restore serves a chunk image's pages from the chunks, 1.6-3x a whole image's lazy
   * restore, and a full one (DMTCP, no userfaultfd) rebuilds its files first, 1.5-4.7x a whole
   * image's restore on a busy machine (bench/README.md, docs/architecture.md).
   */
  chunking: boolean;
  compression: Compression;
  zstdLevel: number;
  /** Where rebuilt files go; null: /dev/shm when memory allows, else the store. */
  rebuildDir: string | null;
  /**
   * A restore reads and checks every chunk of a served pages file at open, even in packs
   * unchanged since they were written (KERNEL_CHECKPOINT_VERIFY=always, as for whole images).
   */
  rehash?: boolean;
  /**
   * A served chunk image's first pages (see page-source.ts, `OpenOptions.prefetch`): 'off' with
   * KERNEL_CHECKPOINT_PREFETCH=0; 'small' (small VMAs only) with =small; else 'hint' (small VMAs
   * and the image's prefetch hint).
   */
  prefetch?: 'off' | 'small' | 'hint';
}

/** The store's chunking settings from the environment; a bad value is a clear error. */
export function chunkingOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): ChunkingOptions {
  const compression = (env.KERNEL_CHECKPOINT_COMPRESSION || 'zstd') as Compression;
  if (!COMPRESSIONS.includes(compression)) {
    throw new RangeError(
      `KERNEL_CHECKPOINT_COMPRESSION must be one of ${COMPRESSIONS.join(', ')}, not ${JSON.stringify(compression)}.`
    );
  }
  const level = env.KERNEL_CHECKPOINT_ZSTD_LEVEL
    ? Number(env.KERNEL_CHECKPOINT_ZSTD_LEVEL)
    : DEFAULT_ZSTD_LEVEL;
  zstdCodec(level); // Checks the level.
  return {
    chunking: env.KERNEL_CHECKPOINT_DEDUP === '1',
    compression,
    zstdLevel: level,
    rebuildDir: env.KERNEL_CHECKPOINT_REBUILD_DIR || null,
    rehash: env.KERNEL_CHECKPOINT_VERIFY === 'always',
    prefetch:
      env[PREFETCH_SETTING] === '0' ? 'off' : env[PREFETCH_SETTING] === 'small' ? 'small' : 'hint'
  };
}

/**
 * Whether a restore first keeps the running kernel's state as a checkpoint of its own:
 * KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE=1 or 0; by default only where that costs its new bytes
 * alone, i.e. when images are kept as chunks (a whole image would be a full copy each time).
 */
export function keepsBeforeRestore(env: NodeJS.ProcessEnv = process.env): boolean {
  const setting = env.KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE;
  return setting ? setting !== '0' : chunkingOptionsFromEnv(env).chunking;
}

/**
 * The codec new chunks are written with. A store always reads zstd frames, whatever it writes:
 * `compression: none` only stops compressing new chunks.
 */
export function codecFor(options: ChunkingOptions): { write: boolean; codec: Codec } {
  return { write: options.compression === 'zstd', codec: zstdCodec(options.zstdLevel) };
}

/** Rebuilt files of a restore: `<base>/kernel-checkpoint-rebuild-<pid>-<random>/`. */
export const REBUILD_PREFIX = 'kernel-checkpoint-rebuild-';
const SHM = '/dev/shm';
/** Kept free in memory beside the rebuilt files and the restored kernel. */
const MEMORY_MARGIN = 256 << 20;

/**
 * Where to rebuild an image of `bytes`: in tmpfs (/dev/shm) when it has room and memory holds
 * both the rebuilt files and the restored kernel (about as large), else in the store itself, so
 * that a restore never pushes the machine into swap.
 */
export async function rebuildBase(
  storeRoot: string,
  bytes: number,
  configured: string | null
): Promise<string> {
  if (configured) {
    return configured;
  }
  const shm = await fs.statfs(SHM).catch(() => null);
  const shmFree = shm ? shm.bavail * shm.bsize : 0;
  if (shmFree > bytes + MEMORY_MARGIN && os.freemem() > 2 * bytes + MEMORY_MARGIN) {
    return SHM;
  }
  return storeRoot;
}

/** Removes rebuild folders whose supervisor is gone (killed during a restore). */
export async function removeStaleRebuilds(bases: string[]): Promise<void> {
  for (const base of bases) {
    const names = await fs.readdir(base).catch(() => [] as string[]);
    for (const name of names) {
      const match = new RegExp(`^${REBUILD_PREFIX}(\\d+)-`).exec(name);
      if (!match || processAlive(Number(match[1]))) {
        continue;
      }
      const full = path.join(base, name);
      const stat = await fs.lstat(full).catch(() => null);
      // Only our own folders (in /dev/shm other users' are theirs).
      if (stat?.isDirectory() && stat.uid === process.getuid?.()) {
        await fs.rm(full, { recursive: true, force: true }).catch(() => undefined);
      }
    }
  }
}

export const DEFAULT_REBUILD_BASES = [SHM];

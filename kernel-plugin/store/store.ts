// The image store: one folder per checkpoint, private to the user, immutable once written.
//
//   <root>/                       0700
//     <id>/                       0700, appears atomically (renamed from .partial-<id>)
//       manifest.json             0600  the public manifest (protocol's Checkpoint)
//       private.json              0600  what restoring needs and clients must not see: the
//                                       kernel's private connection (its key), the engine's data,
//                                       and a checksum of every image file
//       image/                    0700  the engine's files
//     .partial-<id>/              a checkpoint being written; never listed, removed on failure

import { createReadStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import xxhash from 'xxhash-wasm';

import type { Checkpoint, ErrorCode } from '../../protocol/checkpoint-protocol';
import { MANIFEST_FORMAT } from '../../protocol/checkpoint-protocol-constants';

const ID_PATTERN = /^ckpt-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$/;

/**
 * A file of an image: its size, and once the image is sealed its xxh64 checksum and the file's
 * identity (inode, mtime, ctime in ns) at that moment. Any write to the file changes its ctime.
 */
export interface FileDigest {
  path: string;
  bytes: number;
  xxh64?: string;
  stat?: string;
}

/** What restoring an image needs beyond the engine's files. Never sent to clients. */
export interface PrivateRecord {
  format: typeof MANIFEST_FORMAT;
  engine: string;
  engineData: Record<string, unknown>;
  /** The kernel process's own connection file contents (ipc endpoints, private key). */
  kernelConnection: Record<string, unknown>;
  /** Folder of the kernel's ipc endpoints, recreated before a restore. */
  ipcDir: string;
  agentEndpoint: string | null;
  /** The lineage the kernel process belongs to (its ipc folder is named after it). */
  lineage: string;
  arch: string;
  files: FileDigest[];
}

export class StoreError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string
  ) {
    super(message);
    this.name = 'StoreError';
  }
}

/** Maps an fs error onto the protocol's error codes. */
export function storeErrorFrom(error: unknown, what: string): StoreError {
  const code = (error as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new StoreError('no_space', `The disk is full: cannot ${what}.`);
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new StoreError(
      'permission_denied',
      `No permission to ${what}: ${(error as Error).message}`
    );
  }
  return new StoreError('engine_failed', `Cannot ${what}: ${(error as Error)?.message ?? error}`);
}

export function newCheckpointId(now = new Date()): string {
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  return `ckpt-${stamp}-${randomBytes(3).toString('hex')}`;
}

export function defaultStoreRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KERNEL_CHECKPOINT_STORE) {
    return env.KERNEL_CHECKPOINT_STORE;
  }
  const dataDir =
    env.JUPYTER_DATA_DIR ||
    path.join(env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share'), 'jupyter');
  return path.join(dataDir, 'kernel_checkpoint', 'images');
}

/**
 * Background work (sealing) gives way to work a user waits for (a checkpoint or a restore):
 * while any hold is taken, sealing stops between two chunks and resumes when the last is released.
 * On two cores a seal running beside `criu restore` made the restore 1.6x slower.
 */
export class BackgroundPause {
  private holds = 0;
  private waiters: Array<() => void> = [];

  /** Pauses background work until the returned function is called (once). */
  hold(): () => void {
    this.holds++;
    let released = false;
    return () => {
      if (released) {
        return;
      }
      released = true;
      if (--this.holds === 0) {
        for (const wake of this.waiters.splice(0)) {
          wake();
        }
      }
    };
  }

  get paused(): boolean {
    return this.holds > 0;
  }

  /** Resolves at once when nothing holds background work, else when the last hold is released. */
  whenFree(): Promise<void> {
    return this.holds === 0 ? Promise.resolve() : new Promise(wake => this.waiters.push(wake));
  }
}

/** A checkpoint being written: the engine fills `imageDir`, then `commit` publishes it. */
export class PendingImage {
  constructor(
    readonly id: string,
    readonly dir: string,
    private readonly store: ImageStore
  ) {}

  get imageDir(): string {
    return path.join(this.dir, 'image');
  }

  /**
   * Writes both records and renames the folder into place. The checksums are computed after
   * that, by `ImageStore.seal`, so that the caller need not wait for a re-read of the image.
   */
  async commit(manifest: Checkpoint, record: Omit<PrivateRecord, 'files'>): Promise<Checkpoint> {
    try {
      // The user waits for this: every step over the image's files runs on all of them at once.
      const [files] = await Promise.all([listTree(this.imageDir), privatize(this.imageDir)]);
      manifest.image_bytes = files.reduce((sum, file) => sum + file.bytes, 0);
      // Not flushed to disk here: after a dump of gigabytes, an fsync on ext4 waits for the
      // journal, and so for the image's writeback (0.5 s at 4 GiB). Sealing makes it durable.
      await Promise.all([
        writePrivateJson(path.join(this.dir, 'private.json'), { ...record, files }, false),
        writePrivateJson(path.join(this.dir, 'manifest.json'), manifest, false)
      ]);
      await fs.rename(this.dir, this.store.folderOf(this.id));
      return manifest;
    } catch (error) {
      await this.discard();
      throw storeErrorFrom(error, 'save the checkpoint image');
    }
  }

  async discard(): Promise<void> {
    await fs.rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

export class ImageStore {
  /** Holds sealing back while a checkpoint or restore runs. */
  readonly background = new BackgroundPause();

  constructor(readonly root: string) {}

  folderOf(id: string): string {
    return path.join(this.root, id);
  }

  /** Creates the store's folder (private) if needed; fails with permission_denied otherwise. */
  async ensure(): Promise<void> {
    try {
      await fs.mkdir(this.root, { recursive: true, mode: 0o700 });
      await fs.access(this.root, fs.constants.W_OK | fs.constants.R_OK | fs.constants.X_OK);
    } catch (error) {
      // A recursive mkdir on a read-only file system can say ENOENT: ask the nearest existing
      // folder whether it may be written, which says EROFS or EACCES plainly.
      let folder = path.dirname(this.root);
      while (
        !(await fs.stat(folder).then(
          () => true,
          () => false
        )) &&
        folder !== path.dirname(folder)
      ) {
        folder = path.dirname(folder);
      }
      const denied = await fs.access(folder, fs.constants.W_OK).then(
        () => null,
        (e: unknown) => e
      );
      throw storeErrorFrom(denied ?? error, `use the image store ${this.root}`);
    }
  }

  async begin(id: string): Promise<PendingImage> {
    await this.ensure();
    const dir = path.join(this.root, `.partial-${id}`);
    try {
      await fs.mkdir(dir, { mode: 0o700 });
      await fs.mkdir(path.join(dir, 'image'), { mode: 0o700 });
    } catch (error) {
      throw storeErrorFrom(error, `create an image folder in ${this.root}`);
    }
    return new PendingImage(id, dir, this);
  }

  /** Every committed checkpoint, oldest first. Unreadable folders are skipped. */
  async list(): Promise<Checkpoint[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.root);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        return [];
      }
      throw storeErrorFrom(error, `read the image store ${this.root}`);
    }
    const manifests = await Promise.all(
      names.filter(name => ID_PATTERN.test(name)).map(name => this.manifest(name).catch(() => null))
    );
    return manifests
      .filter((m): m is Checkpoint => m !== null)
      .sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
  }

  async manifest(id: string): Promise<Checkpoint> {
    const manifest = await this.readJson<Checkpoint>(id, 'manifest.json');
    if (manifest.format !== MANIFEST_FORMAT || manifest.id !== id) {
      throw new StoreError(
        'foreign_image',
        `Checkpoint ${id} was not written by this version of kernel-checkpoint.`
      );
    }
    return manifest;
  }

  async privateRecord(id: string): Promise<PrivateRecord> {
    const record = await this.readJson<PrivateRecord>(id, 'private.json');
    if (record.format !== MANIFEST_FORMAT || !Array.isArray(record.files)) {
      throw new StoreError(
        'foreign_image',
        `Checkpoint ${id} was not written by this version of kernel-checkpoint.`
      );
    }
    return record;
  }

  imageDir(id: string): string {
    return path.join(this.folderOf(id), 'image');
  }

  /**
   * Checksums every file of a committed image and records it in private.json, with each file's
   * identity at that moment. Until then an image can be restored, but only its sizes are checked.
   */
  async seal(id: string): Promise<void> {
    const record = await this.privateRecord(id);
    const files: FileDigest[] = [];
    for (const file of record.files) {
      const full = path.join(this.imageDir(id), file.path);
      const digest = await digestFile(full, this.background);
      files.push({ ...file, xxh64: digest.xxh64, stat: await identity(full) });
    }
    await writePrivateJson(path.join(this.folderOf(id), 'private.json'), { ...record, files });
    // The records of a checkpoint are durable from here on (the reply did not wait for this).
    await fsyncPath(path.join(this.folderOf(id), 'manifest.json'));
    await fsyncPath(this.folderOf(id));
  }

  /**
   * Checks every file of the image; throws corrupt_image when one is missing, has another size,
   * or does not match its checksum. A file unchanged since it was sealed (same inode, mtime and
   * ctime) is not read again unless `rehash` (KERNEL_CHECKPOINT_VERIFY=always) asks for it.
   */
  async verify(id: string, record: PrivateRecord, rehash = false): Promise<void> {
    // Every file at once: an image has dozens, and this is on the restore's critical path.
    await Promise.all(record.files.map(file => this.verifyFile(id, file, rehash)));
  }

  private async verifyFile(id: string, expected: FileDigest, rehash: boolean): Promise<void> {
    const full = path.join(this.imageDir(id), expected.path);
    const stat = await fs.stat(full).catch(() => null);
    if (!stat?.isFile()) {
      throw new StoreError(
        'corrupt_image',
        `Checkpoint ${id} is damaged: its file ${expected.path} is missing.`
      );
    }
    const damaged = () =>
      new StoreError(
        'corrupt_image',
        `Checkpoint ${id} is damaged: its file ${expected.path} does not match its checksum.`
      );
    if (stat.size !== expected.bytes) {
      throw damaged();
    }
    if (!expected.xxh64 || (!rehash && expected.stat === (await identity(full)))) {
      return;
    }
    if ((await digestFile(full)).xxh64 !== expected.xxh64) {
      throw damaged();
    }
  }

  async relabel(id: string, label: string | null): Promise<Checkpoint> {
    const manifest = await this.manifest(id);
    manifest.label = label;
    try {
      await writePrivateJson(path.join(this.folderOf(id), 'manifest.json'), manifest);
    } catch (error) {
      throw storeErrorFrom(error, `relabel checkpoint ${id}`);
    }
    return manifest;
  }

  async delete(id: string): Promise<void> {
    await this.manifest(id);
    // Rename first so a half-deleted image is never listed or restored.
    const doomed = path.join(this.root, `.deleting-${id}-${randomBytes(3).toString('hex')}`);
    try {
      await fs.rename(this.folderOf(id), doomed);
    } catch (error) {
      throw storeErrorFrom(error, `delete checkpoint ${id}`);
    }
    await fs.rm(doomed, { recursive: true, force: true });
  }

  private async readJson<T>(id: string, file: string): Promise<T> {
    if (!ID_PATTERN.test(id)) {
      throw new StoreError('unknown_checkpoint', `There is no checkpoint ${JSON.stringify(id)}.`);
    }
    let text: string;
    try {
      text = await fs.readFile(path.join(this.folderOf(id), file), 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        throw new StoreError('unknown_checkpoint', `There is no checkpoint ${id} in ${this.root}.`);
      }
      throw storeErrorFrom(error, `read checkpoint ${id}`);
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new StoreError(
        'corrupt_image',
        `Checkpoint ${id} is damaged: its ${file} is not valid JSON.`
      );
    }
  }
}

/** Writes a 0600 JSON file by renaming a complete temporary file over it (flushed when `durable`). */
async function writePrivateJson(file: string, value: unknown, durable = true): Promise<void> {
  const temp = `${file}.${randomBytes(3).toString('hex')}.tmp`;
  const handle = await fs.open(temp, 'w', 0o600);
  try {
    await handle.writeFile(JSON.stringify(value, null, 1) + '\n');
    if (durable) {
      await handle.sync();
    }
  } finally {
    await handle.close();
  }
  await fs.rename(temp, file);
}

/** Flushes a file or folder (its entries) to disk. */
async function fsyncPath(target: string): Promise<void> {
  const handle = await fs.open(target, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes every folder 0700 and every file 0600 below `dir`: images hold the kernel's memory. */
async function privatize(dir: string): Promise<void> {
  await fs.chmod(dir, 0o700);
  const entries = await fs.readdir(dir, { withFileTypes: true });
  await Promise.all(
    entries.map(async entry => {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        await privatize(full);
      } else if (entry.isFile()) {
        await fs.chmod(full, 0o600);
      }
    })
  );
}

let hasher: Promise<Awaited<ReturnType<typeof xxhash>>> | null = null;

/** xxh64 of a file, read in 4 MiB chunks; `pause` (for background work) can stop it between two. */
async function digestFile(
  file: string,
  pause?: BackgroundPause
): Promise<{ bytes: number; xxh64: string }> {
  hasher ??= xxhash();
  const state = (await hasher).create64();
  let bytes = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 4 << 20 })) {
    if (pause?.paused) {
      await pause.whenFree();
    }
    state.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { bytes, xxh64: state.digest().toString(16).padStart(16, '0') };
}

/** The identity of a file's content as the file system keeps it: a write changes its ctime. */
async function identity(file: string): Promise<string> {
  const stat = await fs.stat(file, { bigint: true });
  return `${stat.ino}:${stat.mtimeNs}:${stat.ctimeNs}`;
}

/** Every regular file below `dir`, with paths relative to it and sizes, sorted. */
export async function listTree(dir: string, prefix = ''): Promise<FileDigest[]> {
  const entries = await fs.readdir(path.join(dir, prefix), { withFileTypes: true });
  const found = await Promise.all(
    entries.map(async (entry): Promise<FileDigest[]> => {
      const relative = path.join(prefix, entry.name);
      if (entry.isDirectory()) {
        return listTree(dir, relative);
      }
      if (entry.isFile()) {
        return [{ path: relative, bytes: (await fs.stat(path.join(dir, relative))).size }];
      }
      return [];
    })
  );
  return found.flat().sort((a, b) => a.path.localeCompare(b.path));
}

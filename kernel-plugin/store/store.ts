// The image store: one folder per checkpoint, private to the user, immutable once written.
//
//   <root>/                       0700
//     <id>/                       0700, appears atomically (renamed from .partial-<id>)
//       manifest.json             0600  the public manifest (protocol's Checkpoint)
//       private.json              0600  what restoring needs and clients must not see: the
//                                       kernel's private connection (its key), the engine's data,
//                                       and a checksum of every image file
//       image/                    0700  the engine's files
//     .partial-<id>.<pid>.<start>/  a checkpoint being written by the supervisor of that pid and
//                                 start time; never listed, removed on failure, and by the next
//                                 supervisor that opens the store once its writer is gone
//     .deleting-<id>-<random>/    an image being deleted (renamed first, so never listed)
//
// Nothing in the store is a symbolic link: a link is refused, never followed (it could lead a
// restore to an image outside the store). An id-named folder whose records cannot be read is
// listed with its `damage`, so that it can be seen and deleted rather than keep its bytes unseen.

import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import xxhash from 'xxhash-wasm';

import type { Checkpoint, ErrorCode } from '../../protocol/checkpoint-protocol';
import { MANIFEST_FORMAT } from '../../protocol/checkpoint-protocol-constants';
import { log } from '../supervisor/log';
import { checkPrivateFolder, ensurePrivateFolder, UnsafeFolderError } from './ownership';
import { processStart, writerIsAlive } from './writer';

const ID_PATTERN = /^ckpt-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$/;
const PARTIAL_PREFIX = '.partial-';
const DELETING_PREFIX = '.deleting-';

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
  if (error instanceof StoreError) {
    return error;
  }
  if (error instanceof UnsafeFolderError) {
    return new StoreError('permission_denied', error.message);
  }
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

/**
 * The store's folder as given (KERNEL_CHECKPOINT_STORE or --store), or a StoreError when it is
 * not an absolute local path: `s3://bucket/prefix` made a folder named `s3:` below the kernel's
 * working folder, and any relative path would put images wherever the kernel was started.
 */
export function checkStoreLocation(root: string): string {
  const where = '(KERNEL_CHECKPOINT_STORE or --store)';
  if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(root)) {
    throw new StoreError(
      'invalid_request',
      `The image store ${JSON.stringify(root)} is a URL: stores in S3 or behind any other ` +
        `scheme are not supported yet; give the absolute path of a local folder ${where}.`
    );
  }
  if (!path.isAbsolute(root)) {
    throw new StoreError(
      'invalid_request',
      `The image store ${JSON.stringify(root)} is a relative path: give an absolute path ${where}, ` +
        'so that images do not land below whatever folder the kernel was started in.'
    );
  }
  return root;
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
  readonly root: string;
  private opening: Promise<void>;

  /**
   * Throws a StoreError at once for a root that is not an absolute local path. Opening the store
   * (checking its folder, removing what dead supervisors left) starts here, in the background, so
   * that a supervisor frees a half-written image as soon as it starts; every request waits for it.
   */
  constructor(root: string) {
    this.root = checkStoreLocation(root);
    this.opening = this.open();
    this.opening.catch(() => undefined); // Reported by the first request, which tries again.
  }

  /** Resolves once the store is open; a store refused before is checked again (it may be fixed). */
  private ready(): Promise<void> {
    this.opening = this.opening.catch(() => this.open());
    return this.opening;
  }

  /**
   * Checks the store's folder when it exists (a missing one is created by the first checkpoint),
   * removes the half-written images of supervisors that are gone and the remains of interrupted
   * deletes, and gives every file of every image back its private mode (before CRIU ran under
   * umask 077, each restore left a 0644 `stats-restore` in the image's folder).
   */
  private async open(): Promise<void> {
    const present = await fs.lstat(this.root).then(
      () => true,
      () => false
    );
    if (!present) {
      return;
    }
    let names: string[];
    try {
      await checkPrivateFolder(this.root, 'image store');
      names = await fs.readdir(this.root);
    } catch (error) {
      throw storeErrorFrom(error, `use the image store ${this.root}`);
    }
    await Promise.all(
      names.map(async name => {
        const full = path.join(this.root, name);
        if (name.startsWith(DELETING_PREFIX)) {
          await fs.rm(full, { recursive: true, force: true });
        } else if (name.startsWith(PARTIAL_PREFIX) && !(await writerIsAlive(partialWriter(name)))) {
          const bytes = await bytesBelow(full);
          await fs.rm(full, { recursive: true, force: true });
          log.info(`removed ${name} (${bytes} bytes): its writer was killed mid-checkpoint`);
        } else if (ID_PATTERN.test(name) && (await fs.lstat(full)).isDirectory()) {
          await privatize(full);
        }
      })
    ).catch(error => {
      // Housekeeping: a failure here must not keep the kernel from its images.
      log.warn(`could not tidy the image store ${this.root}: ${(error as Error).message}`);
    });
  }

  folderOf(id: string): string {
    return path.join(this.root, id);
  }

  /**
   * Creates the store's folder (private) if needed; fails with permission_denied when it cannot
   * be used, or when it, or a folder above it, could be changed by someone else.
   */
  async ensure(): Promise<void> {
    try {
      await ensurePrivateFolder(this.root, 'image store');
      await fs.access(this.root, fs.constants.W_OK | fs.constants.R_OK | fs.constants.X_OK);
    } catch (error) {
      if (error instanceof UnsafeFolderError) {
        throw storeErrorFrom(error, '');
      }
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
    await this.ready();
    await this.ensure();
    // Named after its writer, so that another supervisor of this store can tell whether the
    // writer is gone (killed mid-checkpoint) and the partial image is garbage.
    const writer = `${process.pid}.${(await processStart(process.pid)) ?? 0}`;
    const dir = path.join(this.root, `${PARTIAL_PREFIX}${id}.${writer}`);
    try {
      await fs.mkdir(dir, { mode: 0o700 });
      await fs.mkdir(path.join(dir, 'image'), { mode: 0o700 });
    } catch (error) {
      throw storeErrorFrom(error, `create an image folder in ${this.root}`);
    }
    return new PendingImage(id, dir, this);
  }

  /**
   * Every committed checkpoint, oldest first, and every image folder whose records cannot be
   * read, with its `damage`.
   */
  async list(): Promise<Checkpoint[]> {
    let names: string[];
    try {
      await this.ready();
      names = await fs.readdir(this.root);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        return [];
      }
      throw storeErrorFrom(error, `read the image store ${this.root}`);
    }
    const manifests = await Promise.all(
      names
        .filter(name => ID_PATTERN.test(name))
        // Deleted meanwhile: not there any more.
        .map(name => this.entry(name).catch(() => null))
    );
    return manifests
      .filter((m): m is Checkpoint => m !== null)
      .sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
  }

  async manifest(id: string): Promise<Checkpoint> {
    const manifest = await this.readJson<Checkpoint>(id, 'manifest.json');
    if (manifest.format !== MANIFEST_FORMAT) {
      throw new StoreError(
        'foreign_image',
        `Checkpoint ${id} was not written by this version of kernel-checkpoint.`
      );
    }
    if (manifest.id !== id) {
      throw new StoreError(
        'corrupt_image',
        `Checkpoint ${id} is damaged: its manifest.json is that of ${JSON.stringify(manifest.id)} ` +
          '(the folder was renamed or copied).'
      );
    }
    return manifest;
  }

  /**
   * The manifest of checkpoint `id`, or, when the image is there but cannot be restored as it is,
   * what the store can tell of it with its `damage`. Throws unknown_checkpoint when it is not there.
   */
  async entry(id: string): Promise<Checkpoint> {
    try {
      return await this.manifest(id);
    } catch (error) {
      if (!(error instanceof StoreError) || error.code === 'unknown_checkpoint') {
        throw error;
      }
      return {
        format: MANIFEST_FORMAT,
        id,
        parent_id: null,
        label: null,
        created: createdFromId(id),
        engine: { name: '', version: '' },
        duration_ms: 0,
        image_bytes: await bytesBelow(this.folderOf(id)),
        kernel: { name: '', display_name: '', language: '' },
        notebook_path: null,
        state: null,
        damage: { code: error.code, message: error.message }
      };
    }
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
    await this.refuseLinks(id, this.imageDir(id), 'image');
    // Every file at once: an image has dozens, and this is on the restore's critical path.
    await Promise.all(record.files.map(file => this.verifyFile(id, file, rehash)));
  }

  private async verifyFile(id: string, expected: FileDigest, rehash: boolean): Promise<void> {
    const full = path.join(this.imageDir(id), expected.path);
    const stat = await fs.lstat(full).catch(() => null);
    if (stat?.isSymbolicLink()) {
      throw linkRefused(id, `its file ${expected.path}`, full);
    }
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

  /** Deletes an image, a damaged one too; returns what it was (see `entry`). */
  async delete(id: string): Promise<Checkpoint> {
    const entry = await this.entry(id);
    // Rename first so a half-deleted image is never listed or restored.
    const doomed = path.join(this.root, `.deleting-${id}-${randomBytes(3).toString('hex')}`);
    try {
      await fs.rename(this.folderOf(id), doomed);
    } catch (error) {
      throw storeErrorFrom(error, `delete checkpoint ${id}`);
    }
    // A link is removed itself, never what it points to.
    await fs.rm(doomed, { recursive: true, force: true });
    return entry;
  }

  /**
   * Checks that `folder` (the image's own folder, or a folder in it) is a real folder holding no
   * symbolic link; throws unknown_checkpoint when the image's folder is not there.
   */
  private async refuseLinks(id: string, folder: string, what: string | null): Promise<void> {
    const stat = await fs.lstat(folder).catch((error: NodeJS.ErrnoException) => {
      if (what === null && error.code === 'ENOENT') {
        throw new StoreError('unknown_checkpoint', `There is no checkpoint ${id} in ${this.root}.`);
      }
      throw storeErrorFrom(error, `read checkpoint ${id}`);
    });
    const named = what === null ? 'its folder' : `its ${what} folder`;
    if (stat.isSymbolicLink()) {
      throw linkRefused(id, named, folder);
    }
    if (!stat.isDirectory()) {
      throw new StoreError(
        'corrupt_image',
        `Checkpoint ${id} is damaged: ${named} is not a folder.`
      );
    }
    if (what !== null) {
      const entries = await fs.readdir(folder, { withFileTypes: true });
      const link = entries.find(entry => entry.isSymbolicLink());
      if (link) {
        throw linkRefused(id, `the file ${link.name} of ${named}`, path.join(folder, link.name));
      }
    }
  }

  private async readJson<T>(id: string, file: string): Promise<T> {
    if (!ID_PATTERN.test(id)) {
      throw new StoreError('unknown_checkpoint', `There is no checkpoint ${JSON.stringify(id)}.`);
    }
    await this.ready();
    await this.refuseLinks(id, this.folderOf(id), null);
    const full = path.join(this.folderOf(id), file);
    let text: string;
    try {
      // O_NOFOLLOW: a link in place of the file fails (ELOOP) instead of being read.
      const handle = await fs.open(full, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        text = await handle.readFile('utf8');
      } finally {
        await handle.close();
      }
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        throw new StoreError(
          'corrupt_image',
          `Checkpoint ${id} is damaged: its ${file} is missing.`
        );
      }
      if (code === 'ELOOP') {
        throw linkRefused(id, `its ${file}`, full);
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

/**
 * Makes `dir` and every folder below it 0700 and every file 0600: images hold the kernel's memory.
 * A mode already right is left alone (a chmod changes the ctime, which a sealed file's identity
 * holds). Links are not followed.
 */
async function privatize(dir: string): Promise<void> {
  await chmodIfNeeded(dir, 0o700);
  const entries = await fs.readdir(dir, { withFileTypes: true });
  await Promise.all(
    entries.map(async entry => {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        await privatize(full);
      } else if (entry.isFile()) {
        await chmodIfNeeded(full, 0o600);
      }
    })
  );
}

async function chmodIfNeeded(target: string, mode: number): Promise<void> {
  if (((await fs.lstat(target)).mode & 0o7777) !== mode) {
    await fs.chmod(target, mode);
  }
}

/** The bytes of every file below `target`, without following links (a link counts 0). */
async function bytesBelow(target: string): Promise<number> {
  const stat = await fs.lstat(target).catch(() => null);
  if (!stat?.isDirectory()) {
    return stat?.isFile() ? stat.size : 0;
  }
  const names = await fs.readdir(target).catch(() => []);
  const sizes = await Promise.all(names.map(name => bytesBelow(path.join(target, name))));
  return sizes.reduce((sum, size) => sum + size, 0);
}

/** The time in a checkpoint id (ckpt-20260101T120000Z-...), as ISO 8601. */
function createdFromId(id: string): string {
  const [, d] = id.split('-');
  return `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}T${d.slice(9, 11)}:${d.slice(11, 13)}:${d.slice(13, 15)}.000Z`;
}

function linkRefused(id: string, what: string, link: string): StoreError {
  return new StoreError(
    'corrupt_image',
    `Checkpoint ${id} is refused: ${what} ${link} is a symbolic link, and the image store never ` +
      'follows links (they can lead out of the store). Delete the checkpoint, or put the image ' +
      'itself in its place.'
  );
}

/** The writer (pid.start) a partial image's name records, or null when it records none. */
function partialWriter(name: string): string | null {
  const match = /^\.partial-ckpt-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}\.([0-9]+\.[0-9]+)$/.exec(name);
  return match ? match[1] : null;
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
  const handle = await fs.open(file, 'r');
  try {
    // One buffer for the whole file, not a new 4 MiB one per chunk (a read stream's): those
    // waited for the garbage collector in glibc's heap, which kept the supervisor's RSS 50-100
    // MiB above its idle size after a few checkpoints (bench/soak.py).
    const size = (await handle.stat()).size;
    const block = Buffer.allocUnsafe(Math.max(1, Math.min(size, 4 << 20)));
    for (;;) {
      const { bytesRead } = await handle.read(block, 0, block.length, null);
      if (bytesRead === 0) {
        break;
      }
      if (pause?.paused) {
        await pause.whenFree();
      }
      state.update(block.subarray(0, bytesRead));
      bytes += bytesRead;
    }
  } finally {
    await handle.close();
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

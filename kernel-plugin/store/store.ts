// The image store: one folder per checkpoint, private to the user, immutable once written.
//
//   <root>/                       0700
//     <id>/                       0700, appears atomically (renamed from .partial-<id>)
//       manifest.json             0600  the public manifest (protocol's Checkpoint)
//       private.json              0600  what restoring needs and clients must not see: the
//                                       kernel's private connection (its key), the engine's data,
//                                       and a checksum of every image file
//       image/                    0700  the engine's files, while the image is kept whole
//       chunks.bin                0600  once the image is kept as chunks (then image/ is gone):
//                                       every file's chunk list (chunks.ts), written before
//                                       private.json says `storage: "chunks"`
//       chunking.lock             0600  while a process cuts the image into chunks (its pid)
//       lazy-hint.json            0600  the pages the kernel touched first in its last lazy
//                                       restore (engines/criu-prefetch.ts): a hint, not part of
//                                       the image nor of its checksums; written by the engine
//                                       (a checkpoint of a restored kernel, a lazy restore's end)
//     .chunks/                    the chunk store every chunk image uses (chunks.ts)
//     .partial-<id>.<pid>.<start>/  a checkpoint being written by the supervisor of that pid and
//                                 start time; never listed, removed on failure, and by the next
//                                 supervisor that opens the store once its writer is gone
//     .deleting-<id>-<random>/    an image being deleted (renamed first, so never listed)
//
// An image is written whole; in the background it is then cut into chunks shared by every image
// of the store (`chunk`), and its files are removed. A restore of a chunk image rebuilds its files
// first, each chunk checked against its hash (`openImage`). Deleting an image leaves its chunks
// to `collect` (mark-and-sweep). A kill -9 at any step leaves a whole image or a chunk image.
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
import {
  ChunkCorruptError,
  ChunkStore,
  decodeChunkLists,
  encodeChunkLists,
  fsyncPath,
  listUsesChunk,
  processAlive,
  takeLock,
  type ChunkList,
  type GcReport
} from './chunks';
import {
  chunkingOptionsFromEnv,
  codecFor,
  DEFAULT_REBUILD_BASES,
  REBUILD_PREFIX,
  rebuildBase,
  removeStaleRebuilds,
  type ChunkingOptions
} from './chunked-images';
import { cacheFolder, cacheRoot, parseS3Url } from './object-layout';
import { checkPrivateFolder, ensurePrivateFolder, UnsafeFolderError } from './ownership';
import { RemoteImages, RemoteUnavailableError } from './remote-images';
import { S3Remote } from './s3-remote';
import { readHint } from '../engines/criu-prefetch';
import {
  ChunkPageSource,
  eagerChunkRanges,
  PAGES_FILE,
  stageTimer,
  type LazyPages
} from './page-source';
import { processStart, writerIsAlive } from './writer';

const ID_PATTERN = /^ckpt-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$/;
const PARTIAL_PREFIX = '.partial-';
const DELETING_PREFIX = '.deleting-';
const CHUNK_DIR = '.chunks';
const CHUNK_LISTS = 'chunks.bin';
/** Held (our pid) in an image's folder while it is cut into chunks. */
const CHUNKING_LOCK = 'chunking.lock';

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
  /** "chunks": the files are kept as chunk lists in chunks.bin; absent: whole, in image/. */
  storage?: 'chunks';
}

/** An image's files ready for the engine, and what to call once the engine has read them. */
export interface OpenedImage {
  dir: string;
  /** Whether the files were rebuilt from chunks (then `release` removes them). */
  rebuilt: boolean;
  release: () => Promise<void>;
  /**
   * A chunk image opened for a lazy restore: its pages files are served from the chunks by a
   * page server (the folder holds them sparse, with only what `criu restore` reads itself).
   */
  pages?: LazyPages;
}

/** What the store holds, for `kernel-checkpoint store`. */
export interface StoreReport {
  root: string;
  /** Bytes of every file in the store (images, records, chunks). */
  total_bytes: number;
  /** Bytes of chunks no image uses any more (given back by the next collection). */
  garbage_bytes: number;
  notebooks: Array<{ notebook_path: string | null; bytes: number; checkpoints: number }>;
  checkpoints: Array<{
    id: string;
    label: string | null;
    notebook_path: string | null;
    storage: 'chunks' | 'whole' | 'damaged';
    image_bytes: number;
    /** Bytes it added to the store (its new chunks as stored, or its whole files). */
    stored_bytes: number;
    /** Bytes deleting it gives back at once. */
    freed_if_deleted: number;
  }>;
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
  if (error instanceof RemoteUnavailableError) {
    return new StoreError('store_unreachable', `${error.message} (nothing was changed)`);
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
 * The store's location as given (KERNEL_CHECKPOINT_STORE or --store), or a StoreError when it is
 * neither an absolute local path nor an s3:// location: a URL of another scheme once made a
 * folder named after it below the kernel's working folder, and any relative path would put images
 * wherever the kernel was started.
 */
export function checkStoreLocation(root: string): string {
  const where = '(KERNEL_CHECKPOINT_STORE or --store)';
  if (root.startsWith('s3://')) {
    try {
      return parseS3Url(root).url;
    } catch (error) {
      throw new StoreError('invalid_request', `${(error as Error).message} ${where}`);
    }
  }
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(root)) {
    throw new StoreError(
      'invalid_request',
      `The image store ${JSON.stringify(root)} is a URL: only s3://bucket/prefix is supported ` +
        `(any S3-compatible object store); else give the absolute path of a local folder ${where}.`
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
  /** Where the images are: `root`, or an s3:// location whose local cache `root` is. */
  readonly location: string;
  /** The local folder: the store itself, or the cache of a store in object storage. */
  readonly root: string;
  /** The store in object storage this folder caches, or null for a store on a local disk. */
  readonly remote: RemoteImages | null;
  readonly chunks: ChunkStore;
  readonly options: ChunkingOptions;
  private opening: Promise<void>;
  /** Restores reading an image's files (they are not removed meanwhile). */
  private readonly readers = new Map<string, number>();
  /**
   * The chunk lists of the chunk images restores and forks are reading: live for a collection
   * even when their image leaves the store meanwhile (evicted from a cache, or deleted).
   */
  private readonly reading: Array<{ id: string; lists: ChunkList[] }> = [];
  private collecting: Promise<GcReport> | null = null;
  private collectAgain = false;

  /**
   * Throws a StoreError at once for a root that is not an absolute local path. Opening the store
   * (checking its folder, removing what dead supervisors left) starts here, in the background, so
   * that a supervisor frees a half-written image as soon as it starts; every request waits for it.
   */
  constructor(
    root: string,
    options: ChunkingOptions = chunkingOptionsFromEnv(),
    env: NodeJS.ProcessEnv = process.env
  ) {
    this.location = checkStoreLocation(root);
    if (this.location.startsWith('s3://')) {
      // The cache is a chunk store: what is uploaded is its packs, so unchanged memory goes once.
      const s3 = parseS3Url(this.location);
      this.root = cacheFolder(cacheRoot(env, os.homedir()), s3);
      this.options = { ...options, chunking: true };
      try {
        this.remote = new RemoteImages(new S3Remote(s3), this, env);
      } catch (error) {
        throw new StoreError('invalid_request', (error as Error).message);
      }
    } else {
      this.root = this.location;
      this.options = options;
      this.remote = null;
    }
    const { write, codec } = codecFor(options);
    this.chunks = new ChunkStore(path.join(this.root, CHUNK_DIR), codec, write);
    this.opening = this.open();
    this.opening.catch(() => undefined); // Reported by the first request, which tries again.
    if (this.remote) {
      const remote = this.remote;
      // What an earlier supervisor did not upload (stopped, or the network was down) goes now.
      remote.resumed = this.opening
        .then(() => fs.readdir(this.root))
        .then(names => remote.resume(names.filter(name => ID_PATTERN.test(name))))
        .catch(() => undefined);
    }
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
    await removeStaleRebuilds([...DEFAULT_REBUILD_BASES, this.root]);
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
          // A live process cutting it into chunks (`store --migrate`, another supervisor) owns
          // what is there; a lock left by a killed one goes.
          const lock = path.join(full, CHUNKING_LOCK);
          const holder = Number(await fs.readFile(lock, 'utf8').catch(() => ''));
          if (!holder || !processAlive(holder)) {
            await fs.rm(lock, { force: true });
            await this.removeChunkedFiles(name);
          }
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

  /** The error for an id the store does not hold. */
  unknown(id: string): StoreError {
    return new StoreError(
      'unknown_checkpoint',
      `There is no checkpoint ${id} in ${this.location}.`
    );
  }

  /**
   * Puts the records of an image of another machine (its manifest, private record, chunk lists)
   * into this store, as a checkpoint is: written in a partial folder, renamed into place.
   */
  async adopt(id: string, files: Record<string, Buffer>): Promise<void> {
    const pending = await this.begin(id);
    try {
      await fs.rmdir(pending.imageDir);
      for (const [name, data] of Object.entries(files)) {
        await writePrivateFile(path.join(pending.dir, name), data);
      }
      await fs.rename(pending.dir, this.folderOf(id));
    } catch (error) {
      await pending.discard();
      if ((error as NodeJS.ErrnoException).code === 'ENOTEMPTY') {
        return; // Another request brought it meanwhile.
      }
      throw storeErrorFrom(error, `keep checkpoint ${id} in the cache ${this.root}`);
    }
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
    const local = await this.listHere();
    return this.remote ? this.remote.merge(local) : local;
  }

  /** `list` of this folder alone: the store, or what the cache of one in object storage holds. */
  private async listHere(): Promise<Checkpoint[]> {
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
    const folder = this.folderOf(id);
    const before = await fs.lstat(folder);
    const record = await this.privateRecord(id);
    const files: FileDigest[] = [];
    for (const file of record.files) {
      const full = path.join(this.imageDir(id), file.path);
      const digest = await digestFile(full, this.background);
      files.push({ ...file, xxh64: digest.xxh64, stat: await identity(full) });
    }
    // Sealing takes a while: if the folder was replaced meanwhile (by a link to another image,
    // say), the record written through its path would land in someone else's image.
    const after = await fs.lstat(folder).catch(() => null);
    if (!after || after.isSymbolicLink() || after.ino !== before.ino || after.dev !== before.dev) {
      throw new StoreError(
        'corrupt_image',
        `Checkpoint ${id} was not sealed: its folder ${folder} was replaced while it was being sealed.`
      );
    }
    await writePrivateJson(path.join(folder, 'private.json'), { ...record, files });
    // The records of a checkpoint are durable from here on (the reply did not wait for this).
    await fsyncPath(path.join(this.folderOf(id), 'manifest.json'));
    await fsyncPath(this.folderOf(id));
  }

  /**
   * Keeps a committed image as chunks: every file is cut into chunks (those the store lacks go
   * into one new pack), the lists are written to chunks.bin, then private.json says
   * `storage: "chunks"` (the moment the image becomes a chunk image), then the manifest gets its
   * `stored_bytes`, and only then are the files removed. Ingest gives way to checkpoints and
   * restores between 4 MiB blocks. Returns the updated manifest, or null when it already was.
   */
  async chunk(id: string): Promise<Checkpoint | null> {
    if ((await this.privateRecord(id)).storage === 'chunks') {
      return null;
    }
    // Another process may be chunking it (`store --migrate` beside a supervisor migrating in the
    // background): wait for it, then see what it left.
    const lock = path.join(this.folderOf(id), CHUNKING_LOCK);
    while (!(await takeLock(lock))) {
      await new Promise(resolve => setTimeout(resolve, 100));
    }
    try {
      return await this.chunkLocked(id);
    } finally {
      await fs.rm(lock, { force: true });
    }
  }

  private async chunkLocked(id: string): Promise<Checkpoint | null> {
    const record = await this.privateRecord(id);
    if (record.storage === 'chunks') {
      return null;
    }
    await this.refuseLinks(id, this.imageDir(id), 'image');
    const pause = async () => {
      if (this.background.paused) {
        await this.background.whenFree();
      }
    };
    await pause();
    // A CRIU image's eager pages stay raw: a lazy restore copies them before the kernel runs.
    const keepRaw = await eagerChunkRanges(this.imageDir(id));
    const session = await this.chunks.begin({ durable: true });
    try {
      const lists: Record<string, ChunkList> = {};
      for (const file of record.files) {
        const list = await session.ingest(
          path.join(this.imageDir(id), file.path),
          pause,
          keepRaw.get(file.path)
        );
        if (list.bytes !== file.bytes) {
          throw new StoreError(
            'corrupt_image',
            `Checkpoint ${id} is damaged: its file ${file.path} changed size since it was saved.`
          );
        }
        lists[file.path] = list;
      }
      await session.finish();
      const folder = this.folderOf(id);
      await writePrivateFile(path.join(folder, CHUNK_LISTS), encodeChunkLists(lists));
      await writePrivateJson(path.join(folder, 'private.json'), {
        ...record,
        storage: 'chunks'
      });
      // Read again just before it is written: a relabel may have happened meanwhile.
      const manifest = await this.manifest(id);
      manifest.stored_bytes = session.packBytes;
      await writePrivateJson(path.join(folder, 'manifest.json'), manifest);
      await fsyncPath(folder);
      await session.close();
      await this.removeChunkedFiles(id);
      this.remote?.uploader.enqueue(id);
      return manifest;
    } finally {
      await session.close();
    }
  }

  /**
   * Removes what a chunk image no longer needs: its whole files once no restore reads them (a
   * kill during chunking may have left them), or, of a whole image, a chunks.bin written by a
   * chunking that was killed before it committed.
   */
  private async removeChunkedFiles(id: string): Promise<void> {
    // Read as it is (not through privateRecord, which waits for the store to open: this runs
    // while it opens).
    const record = await readNoFollow(path.join(this.folderOf(id), 'private.json'))
      .then(data => JSON.parse(data.toString('utf8')) as PrivateRecord)
      .catch(() => null);
    if (!record) {
      return;
    }
    if (record.storage !== 'chunks') {
      await fs.rm(path.join(this.folderOf(id), CHUNK_LISTS), { force: true });
      return;
    }
    while ((this.readers.get(id) ?? 0) > 0) {
      await new Promise(resolve => setTimeout(resolve, 50));
    }
    await fs.rm(this.imageDir(id), { recursive: true, force: true });
  }

  /** The chunk list of every file of a chunk image; corrupt_image when they cannot be read. */
  async chunkLists(id: string, record: PrivateRecord): Promise<Record<string, ChunkList>> {
    const file = path.join(this.folderOf(id), CHUNK_LISTS);
    let lists: Record<string, ChunkList>;
    try {
      lists = decodeChunkLists(await readNoFollow(file));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new StoreError(
        'corrupt_image',
        code === 'ENOENT'
          ? `Checkpoint ${id} is damaged: its ${CHUNK_LISTS} is missing.`
          : `Checkpoint ${id} is damaged: its ${CHUNK_LISTS} cannot be read (${(error as Error).message}).`
      );
    }
    for (const expected of record.files) {
      if (lists[expected.path]?.bytes !== expected.bytes) {
        throw new StoreError(
          'corrupt_image',
          `Checkpoint ${id} is damaged: its ${CHUNK_LISTS} does not describe its file ${expected.path}.`
        );
      }
    }
    return lists;
  }

  /**
   * The image's files for the engine. A whole image: its own folder (not removed while in use).
   * A chunk image: rebuilt into a private folder (0700, files 0600) in /dev/shm when memory
   * allows, else in the store, every chunk checked against its hash first; `release` removes it.
   * A damaged chunk is a corrupt_image naming every checkpoint that uses it. With `lazyPages`
   * (a CRIU restore that will be lazy), CRIU's pages files are not rebuilt but served (`pages`).
   */
  async openImage(
    id: string,
    record: PrivateRecord,
    options: { lazyPages?: boolean } = {}
  ): Promise<OpenedImage> {
    if (record.storage !== 'chunks') {
      this.readers.set(id, (this.readers.get(id) ?? 0) + 1);
      let released = false;
      return {
        dir: this.imageDir(id),
        rebuilt: false,
        release: async () => {
          if (!released) {
            released = true;
            this.readers.set(id, (this.readers.get(id) ?? 1) - 1);
          }
        }
      };
    }
    const lists = await this.chunkLists(id, record);
    const reading = { id, lists: Object.values(lists) };
    this.reading.push(reading);
    const stopReading = () => {
      const at = this.reading.indexOf(reading);
      if (at >= 0) {
        this.reading.splice(at, 1);
      }
    };
    if (this.remote) {
      try {
        await this.remote.touch(id);
        await this.remote.fetchPacks(lists);
      } catch (error) {
        stopReading();
        throw storeErrorFrom(error, `fetch the chunks of checkpoint ${id}`);
      }
    }
    const served = (name: string) => options.lazyPages === true && PAGES_FILE.test(name);
    // The whole size even when the pages are served: a restore that is not lazy after all
    // writes them out here (`fillIn`).
    const bytes = record.files.reduce((sum, file) => sum + file.bytes, 0);
    const base = await rebuildBase(this.root, bytes, this.options.rebuildDir);
    let dir: string;
    try {
      // mkdtemp makes it 0700.
      dir = await fs.mkdtemp(path.join(base, `${REBUILD_PREFIX}${process.pid}-`));
    } catch (error) {
      stopReading();
      throw storeErrorFrom(error, `make a folder to rebuild checkpoint ${id} in ${base}`);
    }
    let pages: LazyPages | undefined;
    const timed = stageTimer();
    const release = async () => {
      await pages?.release();
      stopReading();
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    };
    const rebuild = async (files: FileDigest[]) => {
      for (const folder of new Set(files.map(file => path.dirname(path.join(dir, file.path))))) {
        await fs.mkdir(folder, { recursive: true, mode: 0o700 });
      }
      const small = files.filter(file => file.bytes <= SMALL_FILE_BYTES);
      // Each file's own time (they are rebuilt at once): KERNEL_CHECKPOINT_TIMINGS=1.
      const timedFile = async (what: string, work: Promise<void>) => {
        const own = stageTimer();
        await work;
        own(`rebuilt ${what}`);
      };
      await Promise.all([
        timedFile(
          `${small.length} small files`,
          this.chunks.materializeSmall(
            small.map(file => ({ list: lists[file.path], dest: path.join(dir, file.path) }))
          )
        ),
        ...files
          .filter(file => !small.includes(file))
          .map(file =>
            timedFile(
              `${file.path} (${(file.bytes / 2 ** 20).toFixed(0)} MiB)`,
              this.chunks.materialize(lists[file.path], path.join(dir, file.path))
            )
          )
      ]);
    };
    const kept = record.files.filter(file => !served(file.path));
    try {
      if (kept.length === record.files.length) {
        // CPU beside the wall time: on a busy machine the wall time is this stretched.
        const cpu = process.cpuUsage();
        await rebuild(kept);
        const used = process.cpuUsage(cpu);
        timed(
          `rebuilt ${kept.length} files, CPU ${((used.user + used.system) / 1000).toFixed(0)} ms ` +
            `(user ${(used.user / 1000).toFixed(0)}, system ${(used.system / 1000).toFixed(0)}; ` +
            `the process's threads)`
        );
      } else {
        // The page source reads the pagemaps and VMAs first; the other files are rebuilt
        // meanwhile.
        const first = kept.filter(file => SERVED_FIRST.test(file.path));
        await rebuild(first);
        timed(`rebuilt ${first.length} pagemap and mm files`);
        const rest = rebuild(kept.filter(file => !first.includes(file)));
        const opening = ChunkPageSource.open(
          dir,
          lists,
          this.chunks,
          damaged => this.damagedChunk(damaged),
          {
            rehash: this.options.rehash,
            hintDir: this.imageDir(id),
            prefetch:
              this.options.prefetch === 'off'
                ? null
                : {
                    hint:
                      this.options.prefetch === 'small' ? null : await readHint(this.imageDir(id))
                  }
          }
        );
        const [opened, rebuilt] = await Promise.allSettled([opening, rest]);
        if (opened.status === 'fulfilled') {
          pages = opened.value;
        }
        for (const outcome of [opened, rebuilt]) {
          if (outcome.status === 'rejected') {
            throw outcome.reason;
          }
        }
        timed(`rebuilt the other ${kept.length - first.length} files`);
      }
    } catch (error) {
      await release();
      throw error instanceof ChunkCorruptError
        ? await this.damagedChunk(error)
        : storeErrorFrom(error, `rebuild checkpoint ${id} in ${base}`);
    }
    return { dir, rebuilt: true, release, pages };
  }

  /** A corrupt_image for a damaged chunk, naming every checkpoint whose files use it. */
  private async damagedChunk(error: ChunkCorruptError): Promise<StoreError> {
    const hash = Buffer.from(error.hash, 'hex');
    const users: string[] = [];
    for (const checkpoint of await this.list()) {
      const record = await this.privateRecord(checkpoint.id).catch(() => null);
      if (record?.storage !== 'chunks') {
        continue;
      }
      const lists = await this.chunkLists(checkpoint.id, record).catch(() => null);
      if (lists && Object.values(lists).some(list => listUsesChunk(list, hash))) {
        users.push(checkpoint.id);
      }
    }
    return new StoreError(
      'corrupt_image',
      `${error.message} It is shared by ${users.length} checkpoint${users.length === 1 ? '' : 's'}, ` +
        `which cannot be restored: ${users.join(', ')}. The others are not affected.`
    );
  }

  /**
   * Every chunk list in use: the chunks.bin of every image folder (written before its image
   * relies on it), and those of the images being read. One that cannot be read stops the
   * collection rather than free its chunks.
   */
  private async liveLists(): Promise<ChunkList[]> {
    const names = await fs.readdir(this.root);
    const lists: ChunkList[] = [];
    for (const name of names.filter(n => ID_PATTERN.test(n))) {
      const data = await readNoFollow(path.join(this.root, name, CHUNK_LISTS)).catch(
        (error: NodeJS.ErrnoException) => {
          if (error.code === 'ENOENT') {
            return null;
          }
          throw error;
        }
      );
      if (data) {
        lists.push(...Object.values(decodeChunkLists(data)));
      }
    }
    lists.push(...this.reading.flatMap(reading => reading.lists));
    return lists;
  }

  /**
   * Gives back the space of chunks no image uses any more (mark-and-sweep in chunks.ts, safe
   * against kill -9). Collections of one store object run one at a time; one asked for while
   * another runs runs after it.
   */
  collect(): Promise<GcReport> {
    if (this.collecting) {
      this.collectAgain = true;
      return this.collecting;
    }
    const run = async (): Promise<GcReport> => {
      const total = { packsRemoved: 0, bytesFreed: 0 };
      do {
        this.collectAgain = false;
        const report = await this.chunks.gc(() => this.liveLists());
        total.packsRemoved += report.packsRemoved;
        total.bytesFreed += report.bytesFreed;
      } while (this.collectAgain);
      await this.remote
        ?.collect()
        .catch(error => log.warn(`could not collect unused packs: ${(error as Error).message}`));
      return total;
    };
    this.collecting = run().finally(() => {
      this.collecting = null;
    });
    return this.collecting;
  }

  /**
   * Converts whole images (written before the store kept chunks, or with KERNEL_CHECKPOINT_DEDUP=0)
   * into chunk images, each checked against its checksums first. Images not sealed yet are left
   * to the supervisor writing them. Returns the ids converted.
   */
  async migrate(onEach?: (id: string) => void): Promise<string[]> {
    const done: string[] = [];
    for (const id of await this.wholeImages()) {
      if (await this.migrateOne(id)) {
        done.push(id);
        onEach?.(id);
      }
    }
    return done;
  }

  /**
   * The whole images `migrate` converts, oldest first: sealed (checksummed) and undamaged ones;
   * an image not sealed yet is its writer's.
   */
  async wholeImages(): Promise<string[]> {
    const ids: string[] = [];
    for (const checkpoint of await this.list()) {
      if (checkpoint.damage) {
        continue;
      }
      const record = await this.privateRecord(checkpoint.id).catch(() => null);
      if (record && record.storage !== 'chunks' && record.files.every(file => file.xxh64)) {
        ids.push(checkpoint.id);
      }
    }
    return ids;
  }

  /**
   * Converts one whole image into a chunk image (`chunk`, which a kill -9 at any step leaves
   * whole or chunks), after checking its files against their checksums; both steps give way to
   * checkpoints and restores. Returns the updated manifest, or null when it was no whole sealed
   * image. A damaged image is a corrupt_image, and stays as it is.
   */
  async migrateOne(id: string): Promise<Checkpoint | null> {
    const record = await this.privateRecord(id);
    if (record.storage === 'chunks' || record.files.some(file => !file.xxh64)) {
      return null;
    }
    await this.verify(id, record, true, this.background);
    return this.chunk(id);
  }

  /**
   * What the store holds: total bytes, bytes per notebook, and per checkpoint what it frees. For
   * a store in object storage, what its cache holds (the bucket's other images are not pulled).
   */
  async report(): Promise<StoreReport> {
    const checkpoints = await this.listHere();
    const chunked: Record<string, ChunkList[]> = {};
    const records = new Map<string, PrivateRecord | null>();
    for (const checkpoint of checkpoints) {
      const record = checkpoint.damage
        ? null
        : await this.privateRecord(checkpoint.id).catch(() => null);
      records.set(checkpoint.id, record);
      if (record?.storage === 'chunks') {
        const lists = await this.chunkLists(checkpoint.id, record).catch(() => null);
        if (lists) {
          chunked[checkpoint.id] = Object.values(lists);
        }
      }
    }
    const usage = await this.chunks.usage(chunked);
    const rows: StoreReport['checkpoints'] = [];
    for (const checkpoint of checkpoints) {
      const folderBytes = await bytesBelow(this.folderOf(checkpoint.id));
      const chunkUsage = usage.images[checkpoint.id];
      const record = records.get(checkpoint.id);
      rows.push({
        id: checkpoint.id,
        label: checkpoint.label,
        notebook_path: checkpoint.notebook_path,
        storage: chunkUsage ? 'chunks' : record ? 'whole' : 'damaged',
        image_bytes: checkpoint.image_bytes,
        stored_bytes: chunkUsage
          ? (checkpoint.stored_bytes ?? chunkUsage.exclusiveBytes) + folderBytes
          : folderBytes,
        freed_if_deleted: (chunkUsage?.freedBytes ?? 0) + folderBytes
      });
    }
    const notebooks = new Map<string | null, { bytes: number; checkpoints: number }>();
    for (const row of rows) {
      const entry = notebooks.get(row.notebook_path) ?? { bytes: 0, checkpoints: 0 };
      entry.bytes += row.stored_bytes;
      entry.checkpoints++;
      notebooks.set(row.notebook_path, entry);
    }
    return {
      root: this.root,
      total_bytes: await bytesBelow(this.root),
      garbage_bytes: usage.garbageBytes,
      notebooks: [...notebooks].map(([notebook_path, entry]) => ({ notebook_path, ...entry })),
      checkpoints: rows
    };
  }

  /**
   * Checks every file of the image; throws corrupt_image when one is missing, has another size,
   * or does not match its checksum. A file unchanged since it was sealed (same inode, mtime and
   * ctime) is not read again unless `rehash` (KERNEL_CHECKPOINT_VERIFY=always) asks for it.
   */
  /** `pause`: the checks give way to it (when they run in the background). */
  async verify(
    id: string,
    record: PrivateRecord,
    rehash = false,
    pause?: BackgroundPause
  ): Promise<void> {
    if (record.storage === 'chunks') {
      // Every chunk is checked against its hash while the files are rebuilt (openImage).
      await this.chunkLists(id, record);
      return;
    }
    await this.refuseLinks(id, this.imageDir(id), 'image');
    // Every file at once: an image has dozens, and this is on the restore's critical path.
    await Promise.all(record.files.map(file => this.verifyFile(id, file, rehash, pause)));
  }

  private async verifyFile(
    id: string,
    expected: FileDigest,
    rehash: boolean,
    pause?: BackgroundPause
  ): Promise<void> {
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
    if ((await digestFile(full, pause)).xxh64 !== expected.xxh64) {
      throw damaged();
    }
  }

  async relabel(id: string, label: string | null): Promise<Checkpoint> {
    const manifest = await this.manifest(id);
    manifest.label = label;
    try {
      // For everyone first: when the object store cannot be reached, nothing changes.
      await this.remote?.relabel(id, label);
      await writePrivateJson(path.join(this.folderOf(id), 'manifest.json'), manifest);
    } catch (error) {
      throw storeErrorFrom(error, `relabel checkpoint ${id}`);
    }
    return manifest;
  }

  /**
   * Deletes an image, a damaged one too; returns what it was (see `entry`). In a store in object
   * storage it is deleted for everyone, unless `localOnly` (it was deleted elsewhere).
   */
  async delete(id: string, options: { localOnly?: boolean } = {}): Promise<Checkpoint> {
    const entry = await this.entry(id);
    if (this.remote && !options.localOnly) {
      try {
        await this.remote.delete(id);
      } catch (error) {
        throw storeErrorFrom(error, `delete checkpoint ${id}`);
      }
    }
    // Rename first so a half-deleted image is never listed or restored.
    const doomed = path.join(this.root, `.deleting-${id}-${randomBytes(3).toString('hex')}`);
    try {
      await fs.rename(this.folderOf(id), doomed);
    } catch (error) {
      throw storeErrorFrom(error, `delete checkpoint ${id}`);
    }
    // A link is removed itself, never what it points to.
    await fs.rm(doomed, { recursive: true, force: true });
    await this.remote?.forget(id);
    return entry;
  }

  /**
   * Removes an uploaded image from the cache of a store in object storage: its records now, the
   * packs no other image of the cache uses at the next collection. It stays in the bucket, listed
   * and restorable: its records and packs come back when it is asked for. Returns false, leaving
   * it, for an image not uploaded yet, one a restore is reading, or in a store on a local disk.
   */
  async evict(id: string): Promise<boolean> {
    const busy = (this.readers.get(id) ?? 0) > 0 || this.reading.some(reading => reading.id === id);
    if (!this.remote || busy || (await this.remote.stateOf(id)).state !== 'uploaded') {
      return false;
    }
    await this.delete(id, { localOnly: true });
    return true;
  }

  /**
   * Bytes of the store's folder once every image is chunks: the files of whole images are not
   * counted (in a cache, sealing cuts each new image into chunks, which the packs then hold), so
   * a checkpoint just taken does not make a full cache give up older images.
   */
  async steadyBytes(): Promise<number> {
    const names = await fs.readdir(this.root).catch(() => [] as string[]);
    const whole = await Promise.all(
      names.filter(name => ID_PATTERN.test(name)).map(name => bytesBelow(this.imageDir(name)))
    );
    return (await bytesBelow(this.root)) - whole.reduce((sum, bytes) => sum + bytes, 0);
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
    if (this.remote && !(await fs.lstat(this.folderOf(id)).catch(() => null))) {
      // An image of another machine: its records come into the cache when it is first asked for.
      try {
        await this.remote.pull(id);
      } catch (error) {
        throw storeErrorFrom(error, `read checkpoint ${id}`);
      }
    }
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
  await writePrivateFile(file, Buffer.from(JSON.stringify(value, null, 1) + '\n'), durable);
}

/** Writes a 0600 file by renaming a complete temporary file over it (flushed when `durable`). */
async function writePrivateFile(file: string, data: Buffer, durable = true): Promise<void> {
  const temp = `${file}.${randomBytes(3).toString('hex')}.tmp`;
  const handle = await fs.open(temp, 'w', 0o600);
  try {
    await handle.writeFile(data);
    if (durable) {
      await handle.sync();
    }
  } finally {
    await handle.close();
  }
  await fs.rename(temp, file);
}

/** Reads a whole file, refusing a symbolic link in its place (ELOOP). */
async function readNoFollow(file: string): Promise<Buffer> {
  const handle = await fs.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    return await handle.readFile();
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

/** Files up to this size are rebuilt together on this thread (`ChunkStore.materializeSmall`). */
const SMALL_FILE_BYTES = 1 << 20;

/** A served chunk image's files the page source reads (its pagemaps and VMAs). */
const SERVED_FIRST = /^(pagemap|mm)-\d+\.img$/;

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

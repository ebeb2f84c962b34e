// An image store in S3-compatible object storage, seen through a local cache. The cache is an
// ordinary chunk store (store.ts, chunks.ts): a checkpoint is safe once it is there, and its packs
// and records are then uploaded in the background (uploader.ts). Another machine, with its own
// cache and the same bucket, lists the images, pulls an image's records when it is asked for,
// and the packs its cache lacks before a restore; labels and deletes are new objects that every
// machine reads. Layout and garbage collection rules: object-layout.ts; why: docs/architecture.md.

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

import type { Checkpoint, SupervisorStatus, UploadState } from '../../protocol/checkpoint-protocol';
import { log } from '../supervisor/log';
import { decodeChunkLists, type ChunkList } from './chunks';
import {
  catalogOf,
  isPackName,
  keys,
  planSweep,
  type ListedObject,
  type RemoteCatalog,
  type S3Location
} from './object-layout';
import { RemoteUnavailableError, S3Remote } from './s3-remote';
import type { ImageStore } from './store';
import { Uploader, uploaderOptionsFromEnv } from './uploader';

/** Packs downloaded at once for a restore. */
const DOWNLOADS_AT_ONCE = 4;
/** The records of an image, uploaded before its manifest (which makes it exist). */
const RECORDS = ['chunks.bin', 'private.json'] as const;
const UPLOADED_DIR = path.join('.remote', 'uploaded');
const SIZE_UNITS: Record<string, number> = {
  '': 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40
};

/**
 * The most the cache may hold (KERNEL_CHECKPOINT_CACHE_MAX_BYTES: bytes, or with K, M, G or T
 * for powers of 1024, as in `20G`), or null when unset: no limit.
 */
export function cacheLimitFromEnv(env: NodeJS.ProcessEnv = process.env): number | null {
  const text = env.KERNEL_CHECKPOINT_CACHE_MAX_BYTES?.trim();
  if (!text) {
    return null;
  }
  const match = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text);
  if (!match) {
    throw new RangeError(
      `KERNEL_CHECKPOINT_CACHE_MAX_BYTES must be a size such as 20G or 500M, not ${JSON.stringify(text)}.`
    );
  }
  return Math.floor(Number(match[1]) * SIZE_UNITS[match[2].toUpperCase()]);
}

/** Raised as the store's `store_unreachable`: the object store cannot be reached. */
export { RemoteUnavailableError };

export class RemoteImages {
  readonly uploader: Uploader;
  /** Manifests, chunk lists' packs and label objects read from the bucket (all immutable). */
  private readonly manifests = new Map<string, Checkpoint>();
  private readonly packsOf = new Map<string, string[]>();
  private readonly labels = new Map<string, string | null>();
  private readonly pulling = new Map<string, Promise<void>>();
  private readonly graceMs: number;
  /** The most the cache may hold (bytes), or null for no limit. */
  private readonly cacheLimit: number | null;
  private evicting: Promise<string[]> = Promise.resolve([]);
  /** Why the last list could not read the bucket (it listed the cache alone), or null. */
  listProblem: string | null = null;
  /** Settles once the images an earlier supervisor left not uploaded are queued. */
  resumed: Promise<void> = Promise.resolve();

  constructor(
    readonly remote: S3Remote,
    private readonly store: ImageStore,
    env: NodeJS.ProcessEnv = process.env
  ) {
    const grace = Number(env.KERNEL_CHECKPOINT_S3_GRACE_SECONDS ?? 3600);
    if (!Number.isFinite(grace) || grace < 0) {
      throw new RangeError(
        `KERNEL_CHECKPOINT_S3_GRACE_SECONDS must be a number of seconds, not ${JSON.stringify(env.KERNEL_CHECKPOINT_S3_GRACE_SECONDS)}.`
      );
    }
    this.graceMs = grace * 1000;
    this.cacheLimit = cacheLimitFromEnv(env);
    this.uploader = new Uploader(
      (id, progress) => this.upload(id, progress),
      uploaderOptionsFromEnv(env)
    );
  }

  get location(): S3Location {
    return this.remote.location;
  }

  private markerOf(id: string): string {
    return path.join(this.store.root, UPLOADED_DIR, id);
  }

  async isUploaded(id: string): Promise<boolean> {
    return fs.access(this.markerOf(id)).then(
      () => true,
      () => false
    );
  }

  /** The upload state of an image of the cache. */
  async stateOf(id: string): Promise<UploadState> {
    return (
      this.uploader.stateOf(id) ??
      ((await this.isUploaded(id)) ? { state: 'uploaded' } : { state: 'local' })
    );
  }

  /**
   * Queues every image of the cache that is not uploaded yet (a supervisor that stopped, or a
   * network that was down); an image whose chunking was cut short is chunked first.
   */
  async resume(ids: string[]): Promise<void> {
    for (const id of ids) {
      if (await this.isUploaded(id)) {
        continue;
      }
      const record = await this.store.privateRecord(id).catch(() => null);
      if (!record) {
        continue;
      }
      if (record.storage !== 'chunks') {
        await this.store
          .chunk(id)
          .catch(error =>
            log.warn(`could not chunk ${id} for its upload: ${(error as Error).message}`)
          );
      } else {
        this.uploader.enqueue(id);
      }
    }
  }

  /**
   * The pack names a chunk image's lists use. Lists come from the bucket too: a name that is not
   * a pack's (say "../x") is refused before it becomes part of a path.
   */
  private static packsIn(lists: Record<string, ChunkList>): string[] {
    const names = [
      ...new Set(Object.values(lists).flatMap(list => list.runs.map(run => run.pack)))
    ];
    const bad = names.find(name => !isPackName(name));
    if (bad !== undefined) {
      throw new Error(`a chunk list names ${JSON.stringify(bad)}, which is not a pack`);
    }
    return names;
  }

  /**
   * Uploads one image of the cache: its refs object first (garbage collection elsewhere keeps the
   * packs it names), the packs the bucket lacks, its records, then its manifest (from then on it
   * exists for everyone); then checks that every pack is still there (a collection that read the
   * bucket before the refs landed may have swept one) and sends again any that is not.
   */
  private async upload(id: string, progress: (done: number) => void): Promise<void> {
    const l = this.location;
    const started = Date.now();
    if (await this.remote.exists(keys.deleted(l, id))) {
      log.info(`${id} was deleted from ${l.url} meanwhile: not uploaded, removed from the cache`);
      await this.store.delete(id, { localOnly: true }).catch(() => undefined);
      return;
    }
    const record = await this.store.privateRecord(id);
    const lists = await this.store.chunkLists(id, record);
    const packs = RemoteImages.packsIn(lists);
    const folder = this.store.folderOf(id);
    const refsKey = keys.refs(l, id, randomBytes(4).toString('hex'));
    await this.remote.putOnce(refsKey, Buffer.from(JSON.stringify({ packs })));
    const missing: string[] = [];
    for (const name of packs) {
      if (!(await this.remote.exists(keys.pack(l, name)))) {
        missing.push(name);
      }
    }
    const sizes = await Promise.all(
      missing.map(name => fs.stat(this.store.chunks.packPath(name)).then(s => s.size))
    );
    const total = sizes.reduce((sum, size) => sum + size, 0) + 1;
    let sent = 0;
    const sendPacks = async (names: string[]) => {
      for (const name of names) {
        const before = sent;
        await this.remote.uploadFile(
          keys.pack(l, name),
          this.store.chunks.packPath(name),
          bytes => {
            sent = before + bytes;
            progress(Math.min(sent / total, 0.99));
          }
        );
      }
    };
    await sendPacks(missing);
    for (const file of RECORDS) {
      await this.remote.putOnce(
        keys.image(l, id, file),
        await fs.readFile(path.join(folder, file))
      );
    }
    await this.remote.putOnce(
      keys.image(l, id, 'manifest.json'),
      await fs.readFile(path.join(folder, 'manifest.json'))
    );
    const gone: string[] = [];
    for (const name of packs) {
      if (!(await this.remote.exists(keys.pack(l, name)))) {
        gone.push(name);
      }
    }
    if (gone.length > 0) {
      log.warn(`${gone.length} packs of ${id} were swept from ${l.url} meanwhile: sending again`);
      await sendPacks(gone);
    }
    await this.remote.deleteKeys([refsKey]);
    await fs.mkdir(path.dirname(this.markerOf(id)), { recursive: true, mode: 0o700 });
    await fs.writeFile(this.markerOf(id), '', { mode: 0o600 });
    this.packsOf.set(id, packs);
    if (this.cacheLimit !== null) {
      void this.evictDownTo(this.cacheLimit, 1).catch(error =>
        log.warn(`could not make room in the cache: ${(error as Error).message}`)
      );
    }
    log.info(
      `uploaded ${id} to ${l.url}: ${sent} bytes in ${missing.length} new packs ` +
        `(${packs.length - missing.length} there already) in ${Date.now() - started} ms`
    );
  }

  /**
   * Brings an image's records (manifest, private record, chunk lists) from the bucket into the
   * cache; its packs come when it is restored (`fetchPacks`). Throws unknown_checkpoint when the
   * bucket has no such image, RemoteUnavailableError when it cannot be read.
   */
  pull(id: string): Promise<void> {
    let pulling = this.pulling.get(id);
    if (!pulling) {
      pulling = this.pullOnce(id).finally(() => this.pulling.delete(id));
      this.pulling.set(id, pulling);
    }
    return pulling;
  }

  private async pullOnce(id: string): Promise<void> {
    const l = this.location;
    const [manifest, deleted] = await Promise.all([
      this.remote.get(keys.image(l, id, 'manifest.json')),
      this.remote.exists(keys.deleted(l, id))
    ]);
    if (!manifest || deleted) {
      throw this.store.unknown(id);
    }
    const files: Record<string, Buffer> = { 'manifest.json': manifest };
    for (const file of RECORDS) {
      const data = await this.remote.get(keys.image(l, id, file));
      if (!data) {
        throw this.store.unknown(id);
      }
      files[file] = data;
    }
    const labelled = await this.labelOf(id);
    if (labelled !== undefined) {
      const parsed = JSON.parse(manifest.toString('utf8')) as Checkpoint;
      files['manifest.json'] = Buffer.from(JSON.stringify({ ...parsed, label: labelled }, null, 1));
    }
    await this.store.adopt(id, files);
    await fs.mkdir(path.dirname(this.markerOf(id)), { recursive: true, mode: 0o700 });
    await fs.writeFile(this.markerOf(id), '', { mode: 0o600 });
  }

  /**
   * Downloads the packs of `lists` the cache lacks, several at once, into the cache's chunk store
   * (written as temporary files, renamed into place); every chunk is then checked against its
   * hash as the files are rebuilt (chunks.ts). Nothing is downloaded when the cache has them all.
   */
  async fetchPacks(lists: Record<string, ChunkList>): Promise<number> {
    const chunks = this.store.chunks;
    const have = async (name: string) =>
      (
        await Promise.all(
          [chunks.packPath(name), path.join(chunks.root, 'doomed', `${name}.pack`)].map(file =>
            fs.access(file).then(
              () => true,
              () => false
            )
          )
        )
      ).some(Boolean);
    const wanted: string[] = [];
    for (const name of RemoteImages.packsIn(lists)) {
      if (!(await have(name))) {
        wanted.push(name);
      }
    }
    if (wanted.length === 0) {
      return 0;
    }
    await chunks.ensure();
    let next = 0;
    const worker = async () => {
      while (next < wanted.length) {
        const name = wanted[next++];
        const temp = path.join(
          path.dirname(chunks.packPath(name)),
          `.tmp-${process.pid}-${name}.pack`
        );
        try {
          if (!(await this.remote.downloadFile(keys.pack(this.location, name), temp))) {
            // Missing: the rebuild names the chunks it lacks, and the checkpoints using them.
            continue;
          }
          await fs.rename(temp, chunks.packPath(name));
        } finally {
          await fs.rm(temp, { force: true });
        }
      }
    };
    await Promise.all(Array.from({ length: DOWNLOADS_AT_ONCE }, worker));
    return wanted.length;
  }

  private async catalog(): Promise<RemoteCatalog> {
    const l = this.location;
    const [images, deleted, labels] = await Promise.all([
      this.remote.list(keys.images(l)),
      this.remote.list(keys.deletedAll(l)),
      this.remote.list(keys.labels(l))
    ]);
    return catalogOf(l, images, deleted, labels);
  }

  /** The newest label given in the bucket, or undefined when none was. */
  private async labelOf(id: string, catalog?: RemoteCatalog): Promise<string | null | undefined> {
    const key = (catalog ?? (await this.catalog())).labelKeys.get(id);
    if (!key) {
      return undefined;
    }
    if (!this.labels.has(key)) {
      const data = await this.remote.get(key);
      this.labels.set(
        key,
        data ? (JSON.parse(data.toString('utf8')) as { label: string | null }).label : null
      );
    }
    return this.labels.get(key);
  }

  /**
   * The cache's images with the bucket's: images deleted elsewhere leave the cache, images of
   * other machines join (their manifests only), labels given elsewhere apply, and every entry has
   * its upload state. When the bucket cannot be read, the cache's images alone, saying so.
   */
  async merge(local: Checkpoint[]): Promise<Checkpoint[]> {
    let catalog: RemoteCatalog;
    try {
      catalog = await this.catalog();
    } catch (error) {
      this.listProblem = (error as Error).message;
      log.warn(`listing the cache only: ${this.listProblem}`);
      return Promise.all(local.map(async c => ({ ...c, upload: await this.stateOf(c.id) })));
    }
    this.listProblem = null;
    const merged: Checkpoint[] = [];
    const seen = new Set<string>();
    for (const checkpoint of local) {
      if (catalog.deleted.has(checkpoint.id)) {
        await this.store.delete(checkpoint.id, { localOnly: true }).catch(() => undefined);
        continue;
      }
      seen.add(checkpoint.id);
      merged.push({ ...checkpoint, upload: await this.stateOf(checkpoint.id) });
    }
    for (const id of catalog.images) {
      if (seen.has(id)) {
        continue;
      }
      let manifest = this.manifests.get(id);
      if (!manifest) {
        const data = await this.remote.get(keys.image(this.location, id, 'manifest.json'));
        if (!data) {
          continue;
        }
        manifest = JSON.parse(data.toString('utf8')) as Checkpoint;
        this.manifests.set(id, manifest);
      }
      merged.push({ ...manifest, upload: { state: 'uploaded' } });
    }
    for (const checkpoint of merged) {
      const label = await this.labelOf(checkpoint.id, catalog);
      if (label !== undefined) {
        checkpoint.label = label;
      }
    }
    return merged.sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
  }

  /**
   * Labels an image for everyone: a new label object (the newest wins). An image not uploaded
   * yet carries its label in the manifest it will upload.
   */
  async relabel(id: string, label: string | null): Promise<void> {
    const state = await this.stateOf(id);
    if (state.state === 'local') {
      return;
    }
    await this.remote.putOnce(
      keys.label(this.location, id, Date.now(), randomBytes(4).toString('hex')),
      Buffer.from(JSON.stringify({ label }))
    );
  }

  /**
   * Deletes an image for everyone: a delete object first (every machine's list drops it, its
   * cache too), then the image's own objects; its packs go to the next collection. An image not
   * uploaded yet is taken from the queue; a delete object is still written, best effort, in case
   * its upload had got as far as its manifest.
   */
  async delete(id: string): Promise<void> {
    const l = this.location;
    const state = await this.stateOf(id);
    this.uploader.cancel(id);
    const mark = this.remote.putOnce(keys.deleted(l, id), Buffer.from(JSON.stringify({ id })));
    if (state.state === 'local') {
      await mark.catch(() => undefined);
    } else {
      await mark;
    }
    await this.remote
      .deleteKeys((['manifest.json', ...RECORDS] as const).map(file => keys.image(l, id, file)))
      .catch(error =>
        log.warn(`could not remove the objects of ${id}: ${(error as Error).message}`)
      );
  }

  /**
   * Notes that image `id` of the cache is used now (restored, forked): a full cache gives up the
   * images used longest ago first, an image never restored counting from its upload.
   */
  async touch(id: string): Promise<void> {
    const now = new Date();
    await fs.utimes(this.markerOf(id), now, now).catch(() => undefined);
  }

  /**
   * Removes every uploaded image from the cache (`ImageStore.evict`: each stays in the bucket,
   * listed and restorable, its records and packs fetched again when it is restored), then the
   * packs no image left in the cache uses. Returns the images removed.
   */
  evictAll(): Promise<string[]> {
    return this.evictDownTo(0, 0);
  }

  /**
   * Removes uploaded images from the cache, those used longest ago first, until it holds at most
   * `maxBytes`, keeping the `keep` used last (the kernel most likely goes back to them).
   * Evictions run one at a time; returns the images removed.
   */
  private evictDownTo(maxBytes: number, keep: number): Promise<string[]> {
    const run = async (): Promise<string[]> => {
      const folder = path.join(this.store.root, UPLOADED_DIR);
      const names = await fs.readdir(folder).catch(() => [] as string[]);
      const used = await Promise.all(
        names.map(async id => ({
          id,
          at: (await fs.stat(path.join(folder, id)).catch(() => null))?.mtimeMs ?? 0
        }))
      );
      used.sort((a, b) => a.at - b.at);
      const evicted: string[] = [];
      let bytes = await this.store.steadyBytes();
      for (const { id } of used.slice(0, Math.max(0, used.length - keep))) {
        if (bytes <= maxBytes) {
          break;
        }
        const gone = await this.store.evict(id).catch((error: Error) => {
          log.warn(`could not remove ${id} from the cache: ${error.message}`);
          return false;
        });
        if (gone) {
          evicted.push(id);
          // A pack goes once no image of the cache uses any chunk of it.
          await this.store.collect();
          bytes = await this.store.steadyBytes();
        }
      }
      if (evicted.length > 0) {
        log.info(
          `removed ${evicted.length} uploaded checkpoints from the cache, which now holds ` +
            `${bytes} bytes: ${evicted.join(', ')}`
        );
      }
      return evicted;
    };
    this.evicting = this.evicting.catch(() => []).then(run);
    return this.evicting;
  }

  /** Forgets an image that left the cache (deleted here or elsewhere). */
  async forget(id: string): Promise<void> {
    this.uploader.cancel(id);
    await fs.rm(this.markerOf(id), { force: true });
  }

  /** The status's `upload`: what is being uploaded, how far, and how many wait. */
  status(): NonNullable<SupervisorStatus['upload']> {
    return { cache: this.store.root, ...this.uploader.summary() };
  }

  /**
   * Deletes the bucket's packs that no image uses, safe against a writer on another machine:
   * packs and refs younger than the grace period are kept, and the refs are read again just
   * before the delete. Returns the packs removed.
   */
  async collect(): Promise<number> {
    const l = this.location;
    const [packs, catalog] = await Promise.all([this.remote.list(keys.packs(l)), this.catalog()]);
    const live = new Set<string>();
    for (const id of catalog.images) {
      let names = this.packsOf.get(id);
      if (!names) {
        const data = await this.remote.get(keys.image(l, id, 'chunks.bin'));
        if (!data) {
          // Its upload is under way (manifest not yet, or chunks.bin read before it landed):
          // its refs object and the grace period keep its packs.
          continue;
        }
        names = RemoteImages.packsIn(decodeChunkLists(data));
        this.packsOf.set(id, names);
      }
      names.forEach(name => live.add(name));
    }
    const readRefs = async () => {
      const objects = await this.remote.list(keys.refsAll(l));
      return Promise.all(
        objects.map(async object => {
          const data = await this.remote.get(object.key);
          const parsed = data ? (JSON.parse(data.toString('utf8')) as { packs?: string[] }) : {};
          return { object, packs: parsed.packs ?? [] };
        })
      );
    };
    const now = Date.now();
    const first = planSweep(l, packs, live, await readRefs(), now, this.graceMs);
    if (first.packs.length === 0 && first.staleRefs.length === 0) {
      return 0;
    }
    const plan = planSweep(l, packs, live, await readRefs(), now, this.graceMs);
    await this.remote.deleteKeys([
      ...plan.packs.map(name => keys.pack(l, name)),
      ...plan.staleRefs
    ]);
    // Leftovers of deletes whose object removal failed.
    const orphans: ListedObject[] = (await this.remote.list(keys.images(l))).filter(o =>
      catalog.deleted.has(o.key.slice(keys.images(l).length).split('/')[0])
    );
    await this.remote.deleteKeys(orphans.map(o => o.key));
    return plan.packs.length;
  }
}

// Where an image store in S3-compatible object storage keeps what, and the decisions made from a
// listing of it (which images exist, their labels, which packs garbage collection may delete).
// Pure functions: s3-remote.ts does the requests. Why this layout: docs/architecture.md ("Images
// in S3-compatible object storage").
//
// Under s3://<bucket>/<prefix>/ every object is written once and never changed:
//   packs/<name>.pack                 a pack of the chunk store (chunks.ts), under the name its
//                                     writer gave it (time + 48 random bits: unique per machine)
//   images/<id>/chunks.bin            every file's chunk list (names the packs it uses)
//   images/<id>/private.json          what a restore needs (never sent to clients)
//   images/<id>/manifest.json         the public manifest; written last: the image exists once
//                                     it is there
//   labels/<id>/<ms>-<random>.json    a relabel ({"label": ...}); the newest key wins
//   deleted/<id>                      a delete, for every machine (the image's objects go next)
//   refs/<id>-<random>.json           the packs an upload in progress relies on; garbage
//                                     collection keeps them (removed once the upload is done)

import path from 'node:path';

/** An s3:// store location. `prefix` is empty or ends with "/". */
export interface S3Location {
  url: string;
  bucket: string;
  prefix: string;
}

const ID = /^ckpt-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$/;
const PACK = /^[0-9a-z]+-[0-9a-f]{12}$/;
/** S3's rules for bucket names (3-63 of lowercase letters, digits, dots and hyphens). */
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** Parses `s3://bucket[/prefix]`; throws a RangeError saying what is wrong. */
export function parseS3Url(url: string): S3Location {
  const match = /^s3:\/\/([^/]*)(?:\/(.*))?$/.exec(url);
  if (!match || !BUCKET.test(match[1])) {
    throw new RangeError(
      `The image store ${JSON.stringify(url)} is not an S3 location: write s3://bucket/prefix ` +
        '(a bucket name is 3-63 lowercase letters, digits, dots and hyphens).'
    );
  }
  const parts = (match[2] ?? '').split('/').filter(part => part !== '');
  if (parts.some(part => part === '.' || part === '..')) {
    throw new RangeError(
      `The image store ${JSON.stringify(url)} has "." or ".." in its prefix: name the prefix plainly.`
    );
  }
  const prefix = parts.length > 0 ? `${parts.join('/')}/` : '';
  return { url: `s3://${match[1]}/${prefix}`, bucket: match[1], prefix };
}

/** The local cache folder of one S3 store: one folder per bucket and prefix below `cacheRoot`. */
export function cacheFolder(cacheRoot: string, location: S3Location): string {
  // One path segment, so that no prefix can climb out of the cache ("." and ".." are refused).
  const name = encodeURIComponent(`${location.bucket}/${location.prefix}`.replace(/\/$/, ''));
  return path.join(cacheRoot, 's3', name);
}

/** The default cache root: $KERNEL_CHECKPOINT_CACHE, else the user's cache folder. */
export function cacheRoot(env: NodeJS.ProcessEnv, home: string): string {
  if (env.KERNEL_CHECKPOINT_CACHE) {
    return env.KERNEL_CHECKPOINT_CACHE;
  }
  return path.join(env.XDG_CACHE_HOME || path.join(home, '.cache'), 'kernel-checkpoint');
}

export const keys = {
  packs: (l: S3Location) => `${l.prefix}packs/`,
  pack: (l: S3Location, name: string) => `${l.prefix}packs/${name}.pack`,
  images: (l: S3Location) => `${l.prefix}images/`,
  image: (l: S3Location, id: string, file: 'manifest.json' | 'private.json' | 'chunks.bin') =>
    `${l.prefix}images/${id}/${file}`,
  labels: (l: S3Location) => `${l.prefix}labels/`,
  label: (l: S3Location, id: string, at: number, random: string) =>
    `${l.prefix}labels/${id}/${String(at).padStart(15, '0')}-${random}.json`,
  deletedAll: (l: S3Location) => `${l.prefix}deleted/`,
  deleted: (l: S3Location, id: string) => `${l.prefix}deleted/${id}`,
  refsAll: (l: S3Location) => `${l.prefix}refs/`,
  refs: (l: S3Location, id: string, random: string) => `${l.prefix}refs/${id}-${random}.json`
};

/** One object of a listing. */
export interface ListedObject {
  key: string;
  lastModified: number;
  size: number;
}

/** What a listing of the bucket says about images: which exist, which are deleted, labels. */
export interface RemoteCatalog {
  /** Ids with a manifest and no delete. */
  images: Set<string>;
  deleted: Set<string>;
  /** The newest label object of an image (key), by id. */
  labelKeys: Map<string, string>;
}

/** Builds the catalog from the listings of images/, deleted/ and labels/. */
export function catalogOf(
  location: S3Location,
  images: ListedObject[],
  deleted: ListedObject[],
  labels: ListedObject[]
): RemoteCatalog {
  const deletedIds = new Set(
    deleted.map(o => o.key.slice(keys.deletedAll(location).length)).filter(id => ID.test(id))
  );
  const ids = new Set<string>();
  for (const object of images) {
    const [id, file] = object.key.slice(keys.images(location).length).split('/');
    if (file === 'manifest.json' && ID.test(id) && !deletedIds.has(id)) {
      ids.add(id);
    }
  }
  const labelKeys = new Map<string, string>();
  for (const object of labels) {
    const [id] = object.key.slice(keys.labels(location).length).split('/');
    // Keys of one image sort by time (zero-padded ms first).
    if (ID.test(id) && (!labelKeys.has(id) || object.key > (labelKeys.get(id) as string))) {
      labelKeys.set(id, object.key);
    }
  }
  return { images: ids, deleted: deletedIds, labelKeys };
}

/** Whether `name` is a pack's name as chunks.ts makes them (so it can never climb a path). */
export function isPackName(name: string): boolean {
  return PACK.test(name);
}

/** The pack name of a key under packs/, or null for anything else. */
export function packOfKey(location: S3Location, key: string): string | null {
  const rest = key.slice(keys.packs(location).length);
  if (!key.startsWith(keys.packs(location)) || !rest.endsWith('.pack')) {
    return null;
  }
  const name = rest.slice(0, -'.pack'.length);
  return PACK.test(name) ? name : null;
}

/** What a sweep of the bucket's packs decides. */
export interface SweepPlan {
  /** Packs to delete: no image and no young refs object names them, and older than the grace. */
  packs: string[];
  /** Refs objects older than the grace: left by an upload that was killed. */
  staleRefs: string[];
}

/**
 * Which packs garbage collection deletes. A pack is kept while a live image names it, while a
 * refs object younger than `graceMs` names it (an upload in progress on some machine), and while
 * it is itself younger than `graceMs` (an upload that has not written its refs yet, or whose
 * manifest is not listed yet). Everything else is garbage.
 */
export function planSweep(
  location: S3Location,
  packs: ListedObject[],
  livePacks: Iterable<string>,
  refs: Array<{ object: ListedObject; packs: string[] }>,
  now: number,
  graceMs: number
): SweepPlan {
  const keep = new Set(livePacks);
  const staleRefs: string[] = [];
  for (const ref of refs) {
    if (now - ref.object.lastModified > graceMs) {
      staleRefs.push(ref.object.key);
    } else {
      ref.packs.forEach(name => keep.add(name));
    }
  }
  const doomed: string[] = [];
  for (const object of packs) {
    const name = packOfKey(location, object.key);
    if (name && !keep.has(name) && now - object.lastModified > graceMs) {
      doomed.push(name);
    }
  }
  return { packs: doomed.sort(), staleRefs };
}

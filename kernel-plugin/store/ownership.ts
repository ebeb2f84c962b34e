// Folders that must be the user's alone (the image store, the runtime folder of the kernels' ipc
// endpoints): whoever else can write to one of them, or to a folder above it, can swap what the
// supervisor restores or connects to. The checks are ssh's StrictModes: the folder is owned by the
// user and nobody else may write to it; each folder above it is owned by root or the user and
// nobody else may write to it, except a sticky folder such as /tmp (its entries can only be
// renamed or removed by their owners).

import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';

/** A folder refused because someone else could change what is in it. */
export class UnsafeFolderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsafeFolderError';
  }
}

const WRITABLE_BY_OTHERS = 0o022;
const STICKY = 0o1000;

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

function currentUid(): number | null {
  return typeof process.getuid === 'function' ? process.getuid() : null;
}

/**
 * Why `stats` (of `folder`, the `what` the user named, or one of its parents when `parentOf` is
 * set) is unsafe, or null when it is safe.
 */
function problemWith(
  folder: string,
  stats: Stats,
  uid: number,
  what: string,
  parentOf: string | null
): string | null {
  const subject = parentOf
    ? `${what} ${parentOf}: the folder ${folder} above it`
    : `${what} ${folder}: it`;
  if (!stats.isDirectory()) {
    return `Refusing the ${subject} is not a folder.`;
  }
  const ownerOk = parentOf ? stats.uid === uid || stats.uid === 0 : stats.uid === uid;
  if (!ownerOk) {
    const owners = parentOf ? `you (uid ${uid}) or root` : `you (uid ${uid})`;
    return `Refusing the ${subject} belongs to uid ${stats.uid}, not to ${owners}.`;
  }
  if (stats.mode & WRITABLE_BY_OTHERS && !(parentOf && stats.mode & STICKY)) {
    return (
      `Refusing the ${subject} can be written by group or others (mode ${octal(stats.mode)}); ` +
      `make it private (chmod go-w ${folder}) or choose another folder.`
    );
  }
  return null;
}

/**
 * Checks that `folder` (which exists) and every folder above it are safe; throws
 * UnsafeFolderError naming the folder and what is wrong. Symbolic links on the way are followed
 * (a store under a linked home folder is fine): the folders checked are the real ones.
 */
export async function checkPrivateFolder(folder: string, what: string): Promise<void> {
  const uid = currentUid();
  if (uid === null) {
    return; // No owners to compare (Windows): nothing here runs there anyway.
  }
  const real = await fs.realpath(folder);
  const own = problemWith(real, await fs.stat(real), uid, what, null);
  if (own) {
    throw new UnsafeFolderError(own);
  }
  await checkParents(path.dirname(real), folder, what);
}

/** Checks `first` and every folder above it as parents of `folder`. */
async function checkParents(first: string, folder: string, what: string): Promise<void> {
  const uid = currentUid();
  if (uid === null) {
    return;
  }
  for (let parent = await fs.realpath(first); ; parent = path.dirname(parent)) {
    const problem = problemWith(parent, await fs.stat(parent), uid, what, folder);
    if (problem) {
      throw new UnsafeFolderError(problem);
    }
    if (parent === path.dirname(parent)) {
      return;
    }
  }
}

/**
 * Creates `folder` if needed (every folder it creates is 0700), checks it as `checkPrivateFolder`
 * does, and takes group and others' remaining access away (a 0755 folder becomes 0700). The
 * folders above are checked before anything is created, so a refusal leaves no trace.
 */
export async function ensurePrivateFolder(folder: string, what: string): Promise<void> {
  let existing = folder;
  while (!(await exists(existing)) && existing !== path.dirname(existing)) {
    existing = path.dirname(existing);
  }
  if (existing !== folder) {
    await checkParents(existing, folder, what);
    await fs.mkdir(folder, { recursive: true, mode: 0o700 });
  }
  await checkPrivateFolder(folder, what);
  const stats = await fs.stat(folder);
  if (stats.mode & 0o077) {
    await fs.chmod(folder, 0o700);
  }
}

function exists(file: string): Promise<boolean> {
  return fs.lstat(file).then(
    () => true,
    () => false
  );
}

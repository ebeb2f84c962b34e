import { execFile } from 'node:child_process';
import { mkdirSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { ensurePrivateFolder, UnsafeFolderError } from '../ownership';
import { underPrivateUmask } from '../private-umask';
import { runtimeFolder } from '../runtime-folder';

const asRoot = process.getuid?.() === 0 ? it : it.skip;

async function modeOf(folder: string): Promise<number> {
  return (await fs.stat(folder)).mode & 0o7777;
}

describe('private folders (ssh StrictModes)', () => {
  let base: string;

  beforeEach(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'kc-owner-'));
  });

  it('creates a folder and the folders to it 0700', async () => {
    await ensurePrivateFolder(path.join(base, 'a', 'b'), 'runtime folder');
    expect(await modeOf(path.join(base, 'a'))).toBe(0o700);
    expect(await modeOf(path.join(base, 'a', 'b'))).toBe(0o700);
  });

  it('takes read access away from group and others', async () => {
    const folder = path.join(base, 'shared');
    await fs.mkdir(folder);
    await fs.chmod(folder, 0o755);
    await ensurePrivateFolder(folder, 'runtime folder');
    expect(await modeOf(folder)).toBe(0o700);
  });

  it('refuses a folder others can write to, naming it and its mode, changing nothing', async () => {
    const folder = path.join(base, 'open');
    await fs.mkdir(folder);
    await fs.chmod(folder, 0o770);
    const refusal = ensurePrivateFolder(folder, 'runtime folder');
    await expect(refusal).rejects.toBeInstanceOf(UnsafeFolderError);
    await expect(refusal).rejects.toThrow(
      `Refusing the runtime folder ${folder}: it can be written by group or others (mode 0770)`
    );
    expect(await modeOf(folder)).toBe(0o770);
  });

  it('refuses a folder below a parent others can write to, creating nothing', async () => {
    const parent = path.join(base, 'open');
    await fs.mkdir(parent);
    await fs.chmod(parent, 0o777);
    const folder = path.join(parent, 'mine');
    await expect(ensurePrivateFolder(folder, 'image store')).rejects.toThrow(
      `Refusing the image store ${folder}: the folder ${parent} above it can be written by group or others (mode 0777)`
    );
    expect(await fs.readdir(parent)).toEqual([]);
  });

  it('accepts a sticky parent such as /tmp, and a link to a private folder', async () => {
    const sticky = path.join(base, 'tmp');
    await fs.mkdir(sticky);
    await fs.chmod(sticky, 0o1777);
    await ensurePrivateFolder(path.join(sticky, 'mine'), 'runtime folder');
    await fs.symlink(path.join(sticky, 'mine'), path.join(base, 'link'));
    await ensurePrivateFolder(path.join(base, 'link'), 'runtime folder');
  });

  it('refuses a link to a folder others can write to', async () => {
    const open = path.join(base, 'open');
    await fs.mkdir(open);
    await fs.chmod(open, 0o777);
    await fs.symlink(open, path.join(base, 'link'));
    await expect(ensurePrivateFolder(path.join(base, 'link'), 'runtime folder')).rejects.toThrow(
      `${open}: it can be written`
    );
  });

  asRoot('refuses a folder another user owns, and a parent another user owns', async () => {
    const theirs = path.join(base, 'theirs');
    await fs.mkdir(theirs, { mode: 0o700 });
    await fs.chown(theirs, 65534, 65534);
    await expect(ensurePrivateFolder(theirs, 'runtime folder')).rejects.toThrow(
      `Refusing the runtime folder ${theirs}: it belongs to uid 65534, not to you (uid 0).`
    );
    await expect(ensurePrivateFolder(path.join(theirs, 'mine'), 'runtime folder')).rejects.toThrow(
      `the folder ${theirs} above it belongs to uid 65534, not to you (uid 0) or root`
    );
  });
});

describe('runtime folder', () => {
  let base: string;

  beforeEach(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'kc-rt-'));
  });

  it('prefers $XDG_RUNTIME_DIR when it exists', () => {
    expect(runtimeFolder({ XDG_RUNTIME_DIR: base })).toBe(path.join(base, 'kernel-checkpoint'));
  });

  it('falls back to $TMPDIR/kernel-checkpoint-<uid>', () => {
    const fallback = path.join(os.tmpdir(), `kernel-checkpoint-${process.getuid?.() ?? 0}`);
    expect(runtimeFolder({})).toBe(fallback);
    expect(runtimeFolder({ XDG_RUNTIME_DIR: path.join(base, 'gone') })).toBe(fallback);
    expect(runtimeFolder({ XDG_RUNTIME_DIR: 'relative' })).toBe(fallback);
    // Too long for the unix sockets below it.
    const long = path.join(base, 'x'.repeat(60));
    mkdirSync(long);
    expect(runtimeFolder({ XDG_RUNTIME_DIR: long })).toBe(fallback);
  });

  it('takes KERNEL_CHECKPOINT_RUNTIME_DIR first', () => {
    expect(runtimeFolder({ KERNEL_CHECKPOINT_RUNTIME_DIR: '/r', XDG_RUNTIME_DIR: base })).toBe(
      '/r'
    );
  });
});

describe('engine under a private umask', () => {
  it('gives the process it starts umask 077, and the supervisor its own back', async () => {
    const before = process.umask(0o022);
    try {
      const run = underPrivateUmask(promisify(execFile));
      const { stdout } = await run('/bin/sh', ['-c', 'umask']);
      expect(stdout.trim()).toBe('0077');
      expect(process.umask(0o022)).toBe(0o022);
    } finally {
      process.umask(before);
    }
  });
});

import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Checkpoint } from '../../../protocol/checkpoint-protocol';
import { ImageStore, newCheckpointId, StoreError } from '../store';
import { testManifest, testRecord } from './image-fixtures';

const manifest = testManifest;
const record = testRecord;

async function save(store: ImageStore, content = 'memory'): Promise<Checkpoint> {
  const id = newCheckpointId();
  const pending = await store.begin(id);
  await fs.writeFile(path.join(pending.imageDir, 'pages.img'), content);
  return pending.commit(manifest(id), { ...record });
}

describe('image store', () => {
  let root: string;
  let store: ImageStore;

  beforeEach(async () => {
    root = path.join(await fs.mkdtemp(path.join(os.tmpdir(), 'kc-store-')), 'images');
    store = new ImageStore(root);
  });

  it('commits an image atomically, privately, with its size and checksums', async () => {
    const saved = await save(store);
    expect(saved.image_bytes).toBe('memory'.length);
    expect((await store.list()).map(c => c.id)).toEqual([saved.id]);
    expect((await fs.stat(root)).mode & 0o777).toBe(0o700);
    const folder = store.folderOf(saved.id);
    expect((await fs.stat(path.join(folder, 'image', 'pages.img'))).mode & 0o777).toBe(0o600);
    expect((await fs.stat(path.join(folder, 'private.json'))).mode & 0o777).toBe(0o600);
    const manifestText = await fs.readFile(path.join(folder, 'manifest.json'), 'utf8');
    expect(manifestText).not.toContain('secret'); // the kernel's key stays in private.json
    await expect(
      store.verify(saved.id, await store.privateRecord(saved.id))
    ).resolves.toBeUndefined();
  });

  it('finds a flipped byte and a missing file once sealed', async () => {
    const saved = await save(store, 'abcdef');
    await store.seal(saved.id);
    const record = await store.privateRecord(saved.id);
    expect(record.files[0].xxh64).toMatch(/^[0-9a-f]{16}$/);
    await expect(store.verify(saved.id, record)).resolves.toBeUndefined();
    const file = path.join(store.imageDir(saved.id), 'pages.img');
    await fs.writeFile(file, 'abcdeg');
    await expect(store.verify(saved.id, record)).rejects.toMatchObject({ code: 'corrupt_image' });
    await fs.rm(file);
    await expect(store.verify(saved.id, record)).rejects.toMatchObject({ code: 'corrupt_image' });
  });

  it('re-reads an unchanged sealed file only when asked to', async () => {
    const saved = await save(store, 'abcdef');
    await store.seal(saved.id);
    const record = await store.privateRecord(saved.id);
    // A checksum that no longer matches, on a file the file system says is unchanged.
    record.files[0].xxh64 = '0000000000000000';
    await expect(store.verify(saved.id, record)).resolves.toBeUndefined();
    await expect(store.verify(saved.id, record, true)).rejects.toMatchObject({
      code: 'corrupt_image'
    });
  });

  it('checks the sizes of an image not sealed yet', async () => {
    const saved = await save(store, 'abcdef');
    const record = await store.privateRecord(saved.id);
    expect(record.files[0].xxh64).toBeUndefined();
    await expect(store.verify(saved.id, record)).resolves.toBeUndefined();
    await fs.writeFile(path.join(store.imageDir(saved.id), 'pages.img'), 'abc');
    await expect(store.verify(saved.id, record)).rejects.toMatchObject({ code: 'corrupt_image' });
  });

  it('holds sealing back while a checkpoint or restore holds the machine', async () => {
    const saved = await save(store, 'x'.repeat(9 << 20)); // three 4 MiB chunks
    const release = store.background.hold();
    let sealed = false;
    const sealing = store.seal(saved.id).then(() => (sealed = true));
    await new Promise(resolve => setTimeout(resolve, 200));
    expect(sealed).toBe(false);
    expect((await store.privateRecord(saved.id)).files[0].xxh64).toBeUndefined();
    release();
    release(); // a second call of the same release changes nothing
    await sealing;
    expect((await store.privateRecord(saved.id)).files[0].xxh64).toMatch(/^[0-9a-f]{16}$/);
    expect(store.background.paused).toBe(false);
  });

  it('writes no seal through a folder replaced by a link while it was being sealed', async () => {
    const first = await save(store, 'first');
    await store.seal(first.id);
    const firstRecord = await fs.readFile(path.join(store.folderOf(first.id), 'private.json'));
    const second = await save(store, 'y'.repeat(9 << 20));
    const release = store.background.hold();
    const sealing = store.seal(second.id);
    await new Promise(resolve => setTimeout(resolve, 100));
    // The folder goes, and a link to the other image takes its place, mid-seal.
    await fs.rename(store.folderOf(second.id), path.join(path.dirname(root), 'moved'));
    await fs.symlink(store.folderOf(first.id), store.folderOf(second.id));
    release();
    await expect(sealing).rejects.toThrow(/replaced while it was being sealed/);
    expect(await fs.readFile(path.join(store.folderOf(first.id), 'private.json'))).toEqual(
      firstRecord
    );
  });

  it('never lists a partial image and discards it', async () => {
    const pending = await store.begin(newCheckpointId());
    expect(await store.list()).toEqual([]);
    await pending.discard();
    expect(await fs.readdir(root)).toEqual([]);
  });

  it('says unknown_checkpoint for ids it does not have, including path tricks', async () => {
    for (const id of ['ckpt-20200101T000000Z-000000', '../etc', '']) {
      await expect(store.manifest(id)).rejects.toBeInstanceOf(StoreError);
      await expect(store.manifest(id)).rejects.toMatchObject({ code: 'unknown_checkpoint' });
    }
  });

  it('relabels and deletes', async () => {
    const saved = await save(store);
    expect((await store.relabel(saved.id, 'named')).label).toBe('named');
    expect((await store.manifest(saved.id)).label).toBe('named');
    await store.delete(saved.id);
    expect(await store.list()).toEqual([]);
    await expect(store.delete(saved.id)).rejects.toMatchObject({ code: 'unknown_checkpoint' });
  });

  it('lists nothing for a store that does not exist yet', async () => {
    expect(await new ImageStore(path.join(root, 'nowhere')).list()).toEqual([]);
  });
});

/** A pid that no process has any more: a child that has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '0']);
  return child.pid;
}

describe('image store housekeeping and hardening', () => {
  let base: string;
  let root: string;

  beforeEach(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'kc-store-'));
    root = path.join(base, 'images');
  });

  async function filesBelow(dir: string): Promise<string[]> {
    const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true });
    return entries.map(entry => path.join(entry.parentPath, entry.name));
  }

  it('names a partial image after its writer and keeps it private', async () => {
    const store = new ImageStore(root);
    const pending = await store.begin(newCheckpointId());
    const start = (await fs.readFile('/proc/self/stat', 'utf8')).split(') ')[1].split(' ')[19];
    expect(path.basename(pending.dir)).toMatch(new RegExp(`\\.${process.pid}\\.${start}$`));
    expect((await fs.stat(pending.dir)).mode & 0o777).toBe(0o700);
    expect((await fs.stat(pending.imageDir)).mode & 0o777).toBe(0o700);
    expect(await store.list()).toEqual([]);
  });

  it('removes the partial images of dead writers when opened, not those of live ones', async () => {
    const writer = new ImageStore(root);
    const live = await writer.begin(newCheckpointId());
    await fs.writeFile(path.join(live.imageDir, 'pages-1.img'), 'being written');
    const id = newCheckpointId();
    const dead = [
      `.partial-${id}`, // an older version's: no writer recorded
      `.partial-${id}.${deadPid()}.12345`,
      // A live pid, but another start time: the pid was reused after the writer died.
      `.partial-${id}.${process.pid}.1`,
      `.deleting-${id}-abcdef`
    ];
    for (const name of dead) {
      await fs.mkdir(path.join(root, name, 'image'), { recursive: true });
      await fs.writeFile(path.join(root, name, 'image', 'pages-1.img'), 'x'.repeat(1000), {
        mode: 0o644
      });
    }
    const opened = new ImageStore(root);
    expect(await opened.list()).toEqual([]);
    expect(await fs.readdir(root)).toEqual([path.basename(live.dir)]);
    // The live writer goes on and commits.
    const saved = await live.commit(manifest(live.id), { ...record });
    expect((await opened.list()).map(c => c.id)).toEqual([saved.id]);
  });

  it('gives every file of the store back its private mode when opened', async () => {
    const saved = await save(new ImageStore(root));
    const image = path.join(root, saved.id, 'image');
    await fs.writeFile(path.join(image, 'stats-restore'), 'written by a restore', { mode: 0o644 });
    await fs.chmod(path.join(image, 'pages.img'), 0o644);
    await fs.chmod(image, 0o755);
    await new ImageStore(root).list();
    for (const file of await filesBelow(root)) {
      const stat = await fs.lstat(file);
      expect([file, stat.mode & 0o777]).toEqual([file, stat.isDirectory() ? 0o700 : 0o600]);
    }
  });

  it('refuses an image folder that is a link out of the store, lists it damaged, deletes the link', async () => {
    const store = new ImageStore(root);
    const saved = await save(store);
    const outside = path.join(base, 'outside');
    await fs.rename(store.folderOf(saved.id), outside);
    await fs.symlink(outside, store.folderOf(saved.id));
    const refused = { code: 'corrupt_image', message: expect.stringMatching(/symbolic link/) };
    await expect(store.manifest(saved.id)).rejects.toMatchObject(refused);
    await expect(store.privateRecord(saved.id)).rejects.toMatchObject(refused);
    const [listed] = await store.list();
    expect(listed).toMatchObject({ id: saved.id, image_bytes: 0, damage: refused });
    await store.delete(saved.id);
    expect(await store.list()).toEqual([]);
    expect(await fs.readdir(outside)).toContain('manifest.json'); // only the link went
  });

  it('says a link to another image is a link, not an image of another version', async () => {
    const store = new ImageStore(root);
    const first = await save(store);
    const second = await save(store);
    await fs.rm(store.folderOf(second.id), { recursive: true });
    await fs.symlink(store.folderOf(first.id), store.folderOf(second.id));
    await expect(store.manifest(second.id)).rejects.toThrow(/symbolic link/);
  });

  it('refuses links in place of a record, the image folder or an image file', async () => {
    const store = new ImageStore(root);
    const saved = await save(store, 'abcdef');
    const folder = store.folderOf(saved.id);
    const record = await store.privateRecord(saved.id);
    const decoy = path.join(base, 'decoy.img');
    await fs.writeFile(decoy, 'ghijkl'); // the same size
    await fs.rm(path.join(folder, 'image', 'pages.img'));
    await fs.symlink(decoy, path.join(folder, 'image', 'pages.img'));
    await expect(store.verify(saved.id, record)).rejects.toThrow(/pages\.img .*symbolic link/);

    await fs.rename(path.join(folder, 'image'), path.join(base, 'image'));
    await fs.symlink(path.join(base, 'image'), path.join(folder, 'image'));
    await expect(store.verify(saved.id, record)).rejects.toThrow(/image folder .*symbolic link/);

    await fs.rename(path.join(folder, 'manifest.json'), path.join(base, 'manifest.json'));
    await fs.symlink(path.join(base, 'manifest.json'), path.join(folder, 'manifest.json'));
    await expect(store.manifest(saved.id)).rejects.toThrow(/manifest\.json .*symbolic link/);
  });

  it('lists an image without its manifest as damaged and deletes it', async () => {
    const store = new ImageStore(root);
    const good = await save(store);
    const lost = await save(store, 'x'.repeat(5000));
    await fs.rm(path.join(store.folderOf(lost.id), 'manifest.json'));
    const listed = await store.list();
    expect(listed.map(c => c.id).sort()).toEqual([good.id, lost.id].sort());
    const damaged = listed.find(c => c.id === lost.id)!;
    expect(damaged.damage).toEqual({
      code: 'corrupt_image',
      message: `Checkpoint ${lost.id} is damaged: its manifest.json is missing.`
    });
    expect(damaged.image_bytes).toBeGreaterThan(5000);
    expect(damaged.created).toBe(lost.created.replace(/\.\d+Z$/, '.000Z'));
    expect(listed.find(c => c.id === good.id)!.damage).toBeUndefined();
    await expect(store.manifest(lost.id)).rejects.toMatchObject({ code: 'corrupt_image' });
    expect((await store.delete(lost.id)).damage?.code).toBe('corrupt_image');
    expect((await store.list()).map(c => c.id)).toEqual([good.id]);
  });

  it('refuses a URL other than s3:// or a relative path as its root, creating nothing', async () => {
    const cwd = process.cwd();
    process.chdir(base);
    try {
      expect(() => new ImageStore('gs://bucket/prefix')).toThrow(
        /"gs:\/\/bucket\/prefix" is a URL: only s3:\/\/bucket\/prefix is supported/
      );
      expect(() => new ImageStore('s3://Not_A_Bucket/x')).toThrow(/not an S3 location/);
      expect(() => new ImageStore('s3://bucket/../x')).toThrow(/"\." or "\.\."/);
      expect(() => new ImageStore('images')).toThrow(/"images" is a relative path/);
      expect(await fs.readdir(base)).toEqual([]);
    } finally {
      process.chdir(cwd);
    }
  });

  it('refuses a root that others can write to, naming it and its mode', async () => {
    await fs.mkdir(root, { mode: 0o700 });
    await fs.chmod(root, 0o777);
    const store = new ImageStore(root);
    const unsafe = {
      code: 'permission_denied',
      message: expect.stringContaining(
        `image store ${root}: it can be written by group or others (mode 0777)`
      )
    };
    await expect(store.list()).rejects.toMatchObject(unsafe);
    await expect(store.begin(newCheckpointId())).rejects.toMatchObject(unsafe);
    // Fixed meanwhile: the same store works again.
    await fs.chmod(root, 0o700);
    expect(await store.list()).toEqual([]);
  });

  (process.getuid?.() === 0 ? it : it.skip)('refuses a root another user owns', async () => {
    await fs.mkdir(root, { mode: 0o700 });
    await fs.chown(root, 65534, 65534);
    await expect(new ImageStore(root).list()).rejects.toMatchObject({
      code: 'permission_denied',
      message: expect.stringContaining('belongs to uid 65534')
    });
  });

  it('creates a fresh root and the folders to it 0700', async () => {
    const deep = path.join(base, 'a', 'b', 'images');
    await save(new ImageStore(deep));
    for (const folder of [path.join(base, 'a'), path.join(base, 'a', 'b'), deep]) {
      expect((await fs.stat(folder)).mode & 0o777).toBe(0o700);
    }
  });
});

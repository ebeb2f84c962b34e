import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Checkpoint } from '../../../protocol/checkpoint-protocol';
import { MANIFEST_FORMAT } from '../../../protocol/checkpoint-protocol-constants';
import { ImageStore, newCheckpointId, StoreError } from '../store';

function manifest(id: string, parent: string | null = null): Checkpoint {
  return {
    format: MANIFEST_FORMAT,
    id,
    parent_id: parent,
    label: null,
    created: new Date().toISOString(),
    engine: { name: 'test', version: '1' },
    duration_ms: 1,
    image_bytes: 0,
    kernel: { name: 'k', display_name: 'K', language: 'python' },
    notebook_path: null,
    state: null
  };
}

const record = {
  format: MANIFEST_FORMAT,
  engine: 'test',
  engineData: {},
  kernelConnection: { key: 'secret' },
  ipcDir: '/tmp/x',
  agentEndpoint: null,
  lineage: 'l',
  arch: process.arch
} as const;

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

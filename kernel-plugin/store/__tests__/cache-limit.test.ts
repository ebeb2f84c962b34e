// The cap on an S3 store's cache (KERNEL_CHECKPOINT_CACHE_MAX_BYTES): sizes as people write them,
// and a clear error for anything else, before the store does anything.

import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { cacheLimitFromEnv } from '../remote-images';
import { ImageStore } from '../store';

describe('KERNEL_CHECKPOINT_CACHE_MAX_BYTES', () => {
  it('reads bytes, and K, M, G, T as powers of 1024', () => {
    const limit = (value?: string) =>
      cacheLimitFromEnv({ KERNEL_CHECKPOINT_CACHE_MAX_BYTES: value });
    expect(limit(undefined)).toBeNull();
    expect(limit('')).toBeNull();
    expect(limit('1048576')).toBe(1 << 20);
    expect(limit('500M')).toBe(500 * 2 ** 20);
    expect(limit('20G')).toBe(20 * 2 ** 30);
    expect(limit('1.5GiB')).toBe(1.5 * 2 ** 30);
    expect(limit(' 2t ')).toBe(2 * 2 ** 40);
  });

  it('refuses anything else, naming the setting, and the store makes nothing', async () => {
    for (const bad of ['lots', '-5G', '5 GB of disk', '0x100']) {
      expect(() => cacheLimitFromEnv({ KERNEL_CHECKPOINT_CACHE_MAX_BYTES: bad })).toThrow(
        /KERNEL_CHECKPOINT_CACHE_MAX_BYTES must be a size such as 20G/
      );
    }
    const home = await fs.mkdtemp(path.join(os.tmpdir(), 'kc-cache-limit-'));
    try {
      const cache = path.join(home, 'cache');
      expect(
        () =>
          new ImageStore('s3://kc-images/team', undefined, {
            KERNEL_CHECKPOINT_CACHE: cache,
            KERNEL_CHECKPOINT_CACHE_MAX_BYTES: 'lots'
          })
      ).toThrow(/KERNEL_CHECKPOINT_CACHE_MAX_BYTES/);
      await expect(fs.access(cache)).rejects.toThrow();
    } finally {
      await fs.rm(home, { recursive: true, force: true });
    }
  });
});

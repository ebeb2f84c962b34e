// zstd for the chunk store's frames. `@mongodb-js/zstd` 1.x ships its native addon as a registry
// package per platform (later majors download it at install time, which fails offline); its
// calls run on libuv's pool, so compressing never blocks the event loop.

import { compress, decompress } from '@mongodb-js/zstd';

import type { Codec } from './chunks';

/** Level 1: level 3 stored no fewer bytes on the bench's states (bench/README.md, DEDUPLICATED STORE). */
export const DEFAULT_ZSTD_LEVEL = 1;

export function zstdCodec(level = DEFAULT_ZSTD_LEVEL): Codec {
  if (!Number.isInteger(level) || level < 1 || level > 19) {
    throw new RangeError(`The zstd level must be a whole number from 1 to 19, not ${level}.`);
  }
  return {
    compress: data => compress(data, level),
    decompress: data => decompress(data)
  };
}

// Sealing: after the checkpoint's reply, while the user goes on, an image is cut into chunks shared
// with every image of the store (or, in a store that keeps images whole, checksummed). The store
// pauses it while a checkpoint or restore runs. Images are sealed one at a time, in order; a
// delete of the image waits.

import type { Checkpoint } from '../../protocol/checkpoint-protocol';
import type { ImageStore } from '../store/store';
import { log } from './log';

export class Sealer {
  /** Images waiting to be sealed or being sealed. */
  private readonly sealing = new Map<string, Promise<void>>();
  /** The last seal queued: the next one starts after it. */
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly store: ImageStore) {}

  /** Seals image `id` in the background; `onStored` gets its manifest once it is chunked. */
  seal(id: string, onStored?: (manifest: Checkpoint) => void): void {
    const sealing = this.queue
      .then(async () => {
        const started = Date.now();
        if (this.store.options.chunking) {
          const manifest = await this.store.chunk(id);
          log.debug(
            `chunked ${id} in ${Date.now() - started} ms: ${manifest?.stored_bytes} new bytes`
          );
          if (manifest) {
            onStored?.(manifest);
          }
        } else {
          await this.store.seal(id);
          log.debug(`sealed ${id} in ${Date.now() - started} ms`);
        }
      })
      .catch(error => log.warn(`could not seal ${id}: ${(error as Error).message}`))
      .finally(() => this.sealing.delete(id));
    this.queue = sealing;
    this.sealing.set(id, sealing);
  }

  /** Resolves once image `id` is not being sealed (at once if it is not). */
  async settled(id: string): Promise<void> {
    await this.sealing.get(id);
  }
}

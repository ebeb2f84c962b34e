// Sealing: after the checkpoint's reply, while the user goes on, an image is cut into chunks shared
// with every image of the store (or, in a store that keeps images whole, checksummed). The store
// pauses it while a checkpoint or restore runs. Images are sealed one at a time, in order; a
// delete of the image waits. In a store that keeps chunks, the whole images it already holds are
// migrated the same way, one at a time, behind the seals.

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
    this.enqueue(id, async () => {
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
    });
  }

  /**
   * In a store that keeps chunks, converts its whole images (kept before chunking was on) into
   * chunk images in the background: each is queued on its own, so that seals of new checkpoints
   * go between two of them, and a kill -9 at any point leaves it whole or chunks
   * (ImageStore.migrateOne). A damaged one is left as it is, and said so in the log.
   */
  migrate(onStored?: (manifest: Checkpoint) => void): void {
    if (!this.store.options.chunking) {
      return;
    }
    void this.store
      .wholeImages()
      .then(ids => {
        if (ids.length > 0) {
          log.info(`migrating ${ids.length} whole image(s) into chunks in the background`);
        }
        for (const id of ids) {
          this.enqueue(id, async () => {
            const started = Date.now();
            const manifest = await this.store.migrateOne(id);
            if (manifest) {
              log.info(
                `migrated ${id} into chunks in ${Date.now() - started} ms: ` +
                  `${manifest.stored_bytes} new bytes`
              );
              onStored?.(manifest);
            }
          });
        }
      })
      .catch(error => log.warn(`could not list images to migrate: ${(error as Error).message}`));
  }

  /** Resolves once image `id` is not being sealed (at once if it is not). */
  async settled(id: string): Promise<void> {
    await this.sealing.get(id);
  }

  private enqueue(id: string, job: () => Promise<void>): void {
    const sealing = this.queue
      .then(job)
      .catch(error => log.warn(`could not seal ${id}: ${(error as Error).message}`))
      .finally(() => {
        if (this.sealing.get(id) === sealing) {
          this.sealing.delete(id);
        }
      });
    this.queue = sealing;
    this.sealing.set(id, sealing);
  }
}

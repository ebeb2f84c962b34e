// Sealing: an image's checksums are computed after the checkpoint's reply, while the user goes
// on (the store pauses it while a checkpoint or restore runs). A delete of the image waits.

import type { ImageStore } from '../store/store';
import { log } from './log';

export class Sealer {
  /** Images whose checksums are being computed. */
  private readonly sealing = new Map<string, Promise<void>>();

  constructor(private readonly store: ImageStore) {}

  /** Checksums image `id` in the background. */
  seal(id: string): void {
    const started = Date.now();
    const sealing = this.store
      .seal(id)
      .then(() => log.debug(`sealed ${id} in ${Date.now() - started} ms`))
      .catch(error => log.warn(`could not checksum ${id}: ${(error as Error).message}`))
      .finally(() => this.sealing.delete(id));
    this.sealing.set(id, sealing);
  }

  /** Resolves once image `id` is not being sealed (at once if it is not). */
  async settled(id: string): Promise<void> {
    await this.sealing.get(id);
  }
}

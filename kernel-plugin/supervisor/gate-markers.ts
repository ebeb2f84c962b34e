// The in-kernel gate's markers: when the plugin closes its gate before a snapshot, it publishes
// a marker on iopub as its last message. The checkpoint flow waits for it, so that all earlier
// output has reached the clients; markers are never relayed.

import { peekContent, type Frames } from './wire';
import { log } from './log';

export class GateMarkers {
  private readonly waiters = new Map<string, () => void>();
  private readonly seen = new Set<string>();

  /** Takes in a marker the kernel published. */
  arrived(frames: Frames): void {
    let id = '';
    try {
      id = (peekContent(frames) as { checkpoint_id?: string }).checkpoint_id ?? '';
    } catch {
      // Unreadable: it still is a marker, and still not for clients.
    }
    // The marker may come before the plugin's `prepared` reaches us: remember it.
    this.seen.add(id);
    this.waiters.get(id)?.();
  }

  /** Resolves once the marker of checkpoint `id` has come, or after `timeoutMs` (with a warning). */
  waitFor(id: string, timeoutMs: number): Promise<void> {
    if (this.seen.delete(id)) {
      return Promise.resolve();
    }
    return new Promise(resolve => {
      const timer = setTimeout(() => {
        log.warn(
          "the kernel plugin's iopub marker did not arrive; output sent just before the snapshot may be late"
        );
        this.waiters.delete(id);
        resolve();
      }, timeoutMs);
      this.waiters.set(id, () => {
        clearTimeout(timer);
        this.seen.delete(id);
        this.waiters.delete(id);
        resolve();
      });
    });
  }
}

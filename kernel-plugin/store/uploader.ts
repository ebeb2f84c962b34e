// The background upload of checkpoints to the object store: one image at a time, in the order
// they were taken. A failed upload (network down, server gone) leaves the image in the cache,
// marked not uploaded, and is tried again after a delay that doubles up to a ceiling; the next
// supervisor that opens the cache queues every image that is still not uploaded.

import type { UploadState } from '../../protocol/checkpoint-protocol';
import { log } from '../supervisor/log';

/** Sends image `id`; `progress` hears the share done (0..1). Resolves once it is in the store. */
export type SendImage = (id: string, progress: (done: number) => void) => Promise<void>;

export interface UploaderOptions {
  firstRetryMs: number;
  maxRetryMs: number;
}

/** A retry after 1 s, then 2, 4 ... up to 5 min (KERNEL_CHECKPOINT_UPLOAD_RETRY_MS sets the first). */
export function uploaderOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): UploaderOptions {
  const first = Number(env.KERNEL_CHECKPOINT_UPLOAD_RETRY_MS || 1000);
  if (!Number.isFinite(first) || first <= 0) {
    throw new RangeError(
      `KERNEL_CHECKPOINT_UPLOAD_RETRY_MS must be a positive number of ms, not ${JSON.stringify(env.KERNEL_CHECKPOINT_UPLOAD_RETRY_MS)}.`
    );
  }
  return { firstRetryMs: first, maxRetryMs: Math.max(first, 300_000) };
}

export class Uploader {
  private readonly queue: string[] = [];
  private readonly states = new Map<string, UploadState>();
  private readonly listeners: Array<(id: string, state: UploadState) => void> = [];
  private running: Promise<void> | null = null;
  private retryMs: number;
  private wake: (() => void) | null = null;
  private stopped = false;
  private current: string | null = null;

  constructor(
    private readonly send: SendImage,
    private readonly options: UploaderOptions
  ) {
    this.retryMs = options.firstRetryMs;
  }

  /** Hears every change of an image's upload state (percent steps of 5 at most). */
  onChange(listener: (id: string, state: UploadState) => void): void {
    this.listeners.push(listener);
  }

  /** The state of an image this uploader knows of (queued, uploading, failed, or done). */
  stateOf(id: string): UploadState | undefined {
    return this.states.get(id);
  }

  /** The image being uploaded, and how many wait (not uploaded yet, or failed). */
  summary(): { uploading: string | null; percent: number | null; waiting: number; error?: string } {
    const current = this.current ? this.states.get(this.current) : undefined;
    const failed = this.queue.map(id => this.states.get(id)?.error).find(Boolean);
    return {
      uploading: current?.state === 'uploading' ? this.current : null,
      percent: current?.state === 'uploading' ? (current.percent ?? 0) : null,
      waiting: this.queue.length,
      ...(failed ? { error: failed } : {})
    };
  }

  /** Queues image `id` (once); it is sent after those queued before it. */
  enqueue(id: string): void {
    if (this.stopped || this.queue.includes(id)) {
      return;
    }
    this.queue.push(id);
    this.set(id, { state: 'local' });
    this.running ??= this.run().finally(() => {
      this.running = null;
    });
    this.wake?.();
  }

  /** Forgets image `id` (deleted); an upload of it under way finishes or fails on its own. */
  cancel(id: string): void {
    const at = this.queue.indexOf(id);
    if (at >= 0 && this.current !== id) {
      this.queue.splice(at, 1);
    }
    this.states.delete(id);
  }

  /** Resolves once nothing waits (for tests and the CLI); never resolves while uploads fail. */
  async idle(): Promise<void> {
    while (this.running) {
      await this.running;
    }
  }

  /** Stops after the upload under way (the supervisor is leaving). */
  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  private set(id: string, state: UploadState): void {
    const before = this.states.get(id);
    this.states.set(id, state);
    const changed =
      before?.state !== state.state ||
      before?.error !== state.error ||
      Math.floor((state.percent ?? 0) / 5) !== Math.floor((before?.percent ?? 0) / 5);
    if (changed) {
      for (const listener of this.listeners) {
        listener(id, state);
      }
    }
  }

  private async run(): Promise<void> {
    while (this.queue.length > 0 && !this.stopped) {
      const id = this.queue[0];
      this.current = id;
      this.set(id, { state: 'uploading', percent: 0 });
      try {
        await this.send(id, done => {
          if (this.states.has(id)) {
            this.set(id, { state: 'uploading', percent: Math.min(99, Math.floor(done * 100)) });
          }
        });
        this.queue.shift();
        this.current = null;
        this.retryMs = this.options.firstRetryMs;
        if (this.states.has(id)) {
          this.set(id, { state: 'uploaded' });
        }
      } catch (error) {
        this.current = null;
        const message = (error as Error)?.message ?? String(error);
        log.warn(`could not upload ${id} (next try in ${this.retryMs} ms): ${message}`);
        if (this.states.has(id)) {
          this.set(id, { state: 'local', error: message });
        }
        // Not dropped from the queue: sent again after the delay, before the images after it.
        await new Promise<void>(resolve => {
          const timer = setTimeout(resolve, this.retryMs);
          // The supervisor never waits for a retry to leave.
          timer.unref();
          this.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wake = null;
        this.retryMs = Math.min(this.retryMs * 2, this.options.maxRetryMs);
      }
    }
  }
}

// What the kernel process is doing, as its iopub says: idle or busy, and which cell it runs.

import { peekContent, stringField, type Frames } from './wire';

/** Status messages whose parent is one of these do not change a client's idea of busy/idle. */
const UNTRACKED_PARENTS = new Set([
  'comm_info_request',
  'kernel_info_request',
  'shutdown_request',
  'interrupt_request',
  'debug_request',
  'usage_request'
]);

export class KernelState {
  /**
   * Whether the kernel is idle, as clients would take it from its status messages ("starting",
   * before its first idle, is not running anything either).
   */
  get idle(): boolean {
    return this.isIdle;
  }

  /** The cell the kernel process is running. */
  executing: { msgId: string; count: number | null } | null = null;
  /** Cells the kernel process has started (a kernel that ran none since a checkpoint is it). */
  executions = 0;

  private isIdle = true;
  private idleWaiters: Array<() => void> = [];

  /**
   * Runs `then` once the kernel is idle (at once if it is); when it waits, after the kernel's own
   * idle has been passed on (the status is observed before it is relayed).
   */
  onceIdle(then: () => void): void {
    if (this.isIdle) {
      then();
    } else {
      this.idleWaiters.push(() => setImmediate(then));
    }
  }

  /** The kernel process was replaced (a restore): it runs nothing, whatever it last said. */
  replaced(): void {
    this.executing = null;
    this.setIdle(true);
  }

  private setIdle(idle: boolean): void {
    this.isIdle = idle;
    if (idle) {
      for (const then of this.idleWaiters.splice(0)) {
        then();
      }
    }
  }

  /** Takes note of one message the kernel published (only status and execute_input matter). */
  observe(frames: Frames, msgType: string): void {
    if (msgType !== 'status' && msgType !== 'execute_input') {
      return;
    }
    // Fields are peeked, not parsed: this runs for three messages of every cell.
    try {
      const [, parentHeader, , content] = frames.parts;
      const parentId = stringField(parentHeader, 'msg_id');
      if (msgType === 'execute_input') {
        if (this.executing && this.executing.msgId === parentId) {
          this.executing.count = peekContent(frames).execution_count ?? null;
        }
        return;
      }
      const parentType = stringField(parentHeader, 'msg_type');
      const state = stringField(content, 'execution_state');
      if (!parentType || !UNTRACKED_PARENTS.has(parentType)) {
        this.setIdle(state !== 'busy');
      }
      if (parentType === 'execute_request' && parentId) {
        if (state === 'busy') {
          this.executing = { msgId: parentId, count: null };
          this.executions++;
        } else if (state === 'idle' && this.executing?.msgId === parentId) {
          this.executing = null;
        }
      }
    } catch {
      // An unreadable message changes nothing.
    }
  }
}

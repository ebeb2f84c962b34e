// What the supervisor answers for the kernel process: kernel_info (from the kernel's own last
// reply, so that a client connecting never makes the kernel run code: IPython's banner draws a
// random "Tip" and so advances the kernel's `random` state), interrupts (a signal to whichever
// process runs the kernel now), and the cell a restore cut short.

import type { KernelState } from './kernel-state';
import type { OutstandingRequest, Relay } from './relay';
import { newMessage, type Frames, type Header } from './wire';

export class KernelStandIn {
  constructor(
    private readonly relay: Relay,
    private readonly state: KernelState,
    private readonly interrupt: () => void
  ) {}

  /**
   * Answers a kernel_info_request as the kernel last answered one; false until it has (the
   * first request then goes to the kernel, whose reply the relay keeps).
   */
  kernelInfo(channel: 'shell' | 'control', frames: Frames, header: Header): boolean {
    const info = this.relay.kernelInfo;
    if (!info) {
      return false;
    }
    const session = this.relay.session;
    // Busy, then idle as a kernel would: a client's request is done only once its idle has come
    // (JupyterLab waits for it before it takes the kernel as ready). While a cell runs, the idle
    // waits for the cell's end, as a kernel's own answer would, so no client thinks it ended.
    void this.relay.publish(
      newMessage('status', { execution_state: 'busy' }, { session, parent: header })
    );
    void this.relay.reply(
      channel,
      frames.identities,
      newMessage('kernel_info_reply', info, { session, parent: header })
    );
    this.state.onceIdle(
      () =>
        void this.relay.publish(
          newMessage('status', { execution_state: 'idle' }, { session, parent: header })
        )
    );
    return true;
  }

  /** Interrupts the kernel by a signal and replies at once. */
  interruptRequest(frames: Frames, header: Header): void {
    this.interrupt();
    const reply = newMessage(
      'interrupt_reply',
      { status: 'ok' },
      { session: this.relay.session, parent: header }
    );
    void this.relay.reply('control', frames.identities, reply);
  }

  /**
   * Answers the cell the replaced kernel process was running, which that process never will:
   * a cell that asked for this restore (`%checkpoint restore`) ends well; any other was cut
   * short and ends in an error saying why.
   */
  finishReplacedCell(cell: OutstandingRequest, id: string, askedForIt: boolean): void {
    const session = this.relay.session;
    const parent = cell.header;
    const count = this.state.executing?.count ?? 0;
    const evalue = `The kernel was restored from checkpoint ${id} while this cell ran.`;
    if (askedForIt) {
      void this.relay.publish(
        newMessage(
          'stream',
          { name: 'stdout', text: `Restored checkpoint ${id}.\n` },
          { session, parent }
        )
      );
    } else {
      void this.relay.publish(
        newMessage(
          'error',
          { ename: 'KernelRestored', evalue, traceback: [`KernelRestored: ${evalue}`] },
          { session, parent }
        )
      );
    }
    const content = askedForIt
      ? { status: 'ok', execution_count: count, user_expressions: {}, payload: [] }
      : { status: 'error', execution_count: count, ename: 'KernelRestored', evalue, traceback: [] };
    void this.relay.reply(
      'shell',
      cell.frames.identities,
      newMessage('execute_reply', content, { session, parent })
    );
    void this.relay.publish(newMessage('status', { execution_state: 'idle' }, { session, parent }));
  }
}

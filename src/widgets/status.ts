/**
 * Status bar item: what a checkpoint or restore is doing, or the current checkpoint.
 */
import type { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';
import { checkpointIcon } from '../icons';
import type { KernelCheckpointSession } from '../session';
import { busyText, checkpointName } from '../text';
import { CommandIDs } from '../tokens';
import type { IKernelCheckpoint } from '../tokens';

export class CheckpointStatus extends Widget {
  constructor(checkpoints: IKernelCheckpoint, commands: CommandRegistry) {
    super();
    this._checkpoints = checkpoints;
    this.addClass('jp-KernelCheckpoint-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.node.setAttribute('aria-label', 'Kernel checkpoint status: open the timeline');
    const icon = document.createElement('span');
    icon.className = 'jp-KernelCheckpoint-statusIcon';
    checkpointIcon.element({ container: icon, tag: 'span', elementSize: 'small' });
    this._spinner = document.createElement('span');
    this._spinner.className = 'jp-KernelCheckpoint-spinner';
    this._text = document.createElement('span');
    this._text.className = 'jp-KernelCheckpoint-statusText';
    this.node.append(icon, this._spinner, this._text);
    this._text.setAttribute('aria-live', 'polite');
    const open = () => void commands.execute(CommandIDs.showTimeline);
    this.node.addEventListener('click', open);
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        open();
      }
    });
    checkpoints.currentChanged.connect(this._onCurrentChanged, this);
    this._onCurrentChanged();
  }

  /** Whether the item has something to say. */
  get active(): boolean {
    const s = this._session;
    return !!s && (s.model.availability.state === 'ready' || !!s.model.busy);
  }

  private _onCurrentChanged(): void {
    const next = this._checkpoints.current;
    if (this._session && !this._session.isDisposed) {
      this._session.model.changed.disconnect(this._refresh, this);
      this._session.model.busyChanged.disconnect(this._refresh, this);
    }
    this._session = next;
    if (next) {
      next.model.changed.connect(this._refresh, this);
      next.model.busyChanged.connect(this._refresh, this);
    }
    this._refresh();
  }

  private _refresh(): void {
    const s = this._session;
    const busy = s?.model.busy ?? null;
    this.node.classList.toggle('jp-mod-busy', !!busy);
    this.node.classList.toggle('lm-mod-hidden', !this.active);
    if (busy) {
      this._text.textContent = busyText(busy.action, busy.stage, busy.message);
    } else if (s && s.model.availability.state === 'ready') {
      const current = s.model.current;
      this._text.textContent = current
        ? `Checkpoint: ${checkpointName(current)}`
        : `Checkpoints: ${s.model.checkpoints.length}`;
    } else {
      this._text.textContent = '';
    }
    this.node.title = this._text.textContent ?? '';
  }

  private _checkpoints: IKernelCheckpoint;
  private _session: KernelCheckpointSession | null = null;
  private _spinner: HTMLSpanElement;
  private _text: HTMLSpanElement;
}

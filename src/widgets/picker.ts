/**
 * The body of the "Restore Kernel" dialog: a list of the notebook's checkpoints, newest first.
 */
import type { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import type { Checkpoint } from '../../protocol/checkpoint-protocol';
import { formatBytes, relativeTime } from '../format';
import { checkpointName } from '../text';

export class CheckpointPicker extends Widget implements Dialog.IBodyWidget<string> {
  constructor(checkpoints: readonly Checkpoint[], currentId: string | null) {
    super();
    this.addClass('jp-KernelCheckpoint-picker');
    const label = document.createElement('label');
    label.textContent = 'Checkpoint';
    const select = document.createElement('select');
    select.className = 'jp-mod-styled';
    select.setAttribute('aria-label', 'Checkpoint to restore');
    const sorted = [...checkpoints].sort((a, b) => Date.parse(b.created) - Date.parse(a.created));
    for (const c of sorted) {
      const option = document.createElement('option');
      option.value = c.id;
      const count = c.state ? ` · [${c.state.execution_count}]` : '';
      option.textContent = `${checkpointName(c)} — ${relativeTime(c.created)}${count} · ${formatBytes(
        c.image_bytes
      )}${c.id === currentId ? ' (current)' : ''}`;
      select.appendChild(option);
    }
    label.appendChild(select);
    this.node.appendChild(label);
    this._select = select;
  }

  /** The id of the chosen checkpoint. */
  getValue(): string {
    return this._select.value;
  }

  private _select: HTMLSelectElement;
}

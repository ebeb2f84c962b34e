/**
 * The "Checkpoint kernel" button of a notebook toolbar, with a busy state.
 */
import type { NotebookPanel } from '@jupyterlab/notebook';
import type { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';
import { checkpointIcon } from '../icons';
import type { KernelCheckpointSession } from '../session';
import { busyText } from '../text';
import { CommandIDs } from '../tokens';

export class CheckpointButton extends Widget {
  constructor(options: CheckpointButton.IOptions) {
    super();
    this._session = options.session;
    this._panel = options.panel;
    this._commands = options.commands;
    this.addClass('jp-ToolbarButton');
    this.addClass('jp-KernelCheckpoint-toolbarButton');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'jp-ToolbarButtonComponent jp-mod-minimal jp-Button';
    button.setAttribute('aria-label', 'Checkpoint kernel');
    button.dataset.command = CommandIDs.checkpoint;
    const icon = document.createElement('span');
    icon.className = 'jp-ToolbarButtonComponent-icon';
    checkpointIcon.element({ container: icon, elementPosition: 'center', tag: 'span' });
    const spinner = document.createElement('span');
    spinner.className = 'jp-KernelCheckpoint-spinner jp-KernelCheckpoint-buttonSpinner';
    const label = document.createElement('span');
    label.className = 'jp-ToolbarButtonComponent-label';
    // 'kernel': the notebook toolbar also has JupyterLab's save-and-checkpoint (of the file).
    label.textContent = 'Checkpoint kernel';
    button.append(icon, spinner, label);
    button.addEventListener('click', () => {
      if (this._session.model.busy) {
        return;
      }
      void this._commands.execute(CommandIDs.checkpoint, { path: this._panel.context.path });
    });
    this.node.appendChild(button);
    this._button = button;
    this._session.model.busyChanged.connect(this._refresh, this);
    this._session.model.changed.connect(this._refresh, this);
    this._refresh();
  }

  private _refresh(): void {
    const model = this._session.model;
    const busy = model.busy;
    const a = model.availability;
    const button = this._button;
    button.classList.toggle('jp-mod-busy', !!busy);
    button.setAttribute('aria-busy', busy ? 'true' : 'false');
    button.disabled = !!busy;
    if (busy) {
      button.title = busyText(busy.action, busy.stage, busy.message);
    } else if (a.state === 'unavailable') {
      button.title = `Checkpoint kernel (not available: ${a.message})`;
    } else {
      button.title = 'Checkpoint kernel: save the whole kernel process to restore it later';
    }
    button.classList.toggle('jp-mod-unavailable', a.state === 'unavailable');
  }

  private _session: KernelCheckpointSession;
  private _panel: NotebookPanel;
  private _commands: CommandRegistry;
  private _button: HTMLButtonElement;
}

export namespace CheckpointButton {
  export interface IOptions {
    panel: NotebookPanel;
    session: KernelCheckpointSession;
    commands: CommandRegistry;
  }
}

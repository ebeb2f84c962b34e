/**
 * Automatic checkpoints: every N minutes, or after a cell that ran N seconds or more.
 */
import { NotebookActions } from '@jupyterlab/notebook';
import type { Notebook, NotebookPanel } from '@jupyterlab/notebook';
import type { CommandRegistry } from '@lumino/commands';
import type { ICheckpointSettings } from './settings';
import { CommandIDs } from './tokens';
import type { IKernelCheckpoint } from './tokens';

export class AutoCheckpointer {
  constructor(checkpoints: IKernelCheckpoint, commands: CommandRegistry) {
    this._checkpoints = checkpoints;
    this._commands = commands;
    checkpoints.settingsChanged.connect((_, s) => this._configure(s));
    NotebookActions.executionScheduled.connect(this._onScheduled, this);
    NotebookActions.executed.connect(this._onExecuted, this);
    this._configure(checkpoints.settings);
  }

  dispose(): void {
    window.clearInterval(this._timer);
    NotebookActions.executionScheduled.disconnect(this._onScheduled, this);
    NotebookActions.executed.disconnect(this._onExecuted, this);
  }

  private _configure(settings: ICheckpointSettings): void {
    window.clearInterval(this._timer);
    this._timer = 0;
    const auto = settings.autoCheckpoint;
    if (auto.mode === 'interval') {
      this._timer = window.setInterval(() => this._tick(), auto.minutes * 60_000);
    }
  }

  /** Every interval: checkpoint each notebook whose kernel ran something since its last one. */
  private _tick(): void {
    for (const panel of Array.from(this._dirty)) {
      this._dirty.delete(panel);
      this._checkpoint(panel, 'auto');
    }
  }

  private _onScheduled(_: unknown, args: { notebook: Notebook; cell: { model: { id: string } } }) {
    this._started.set(args.cell.model.id, Date.now());
  }

  private _onExecuted(
    _: unknown,
    args: { notebook: Notebook; cell: { model: { id: string } }; success: boolean }
  ): void {
    const panel = this._panelOf(args.notebook);
    if (!panel) {
      return;
    }
    const start = this._started.get(args.cell.model.id);
    this._started.delete(args.cell.model.id);
    const auto = this._checkpoints.settings.autoCheckpoint;
    if (auto.mode === 'interval') {
      this._dirty.add(panel);
    } else if (auto.mode === 'long-cell' && start !== undefined && args.success) {
      const seconds = (Date.now() - start) / 1000;
      if (seconds >= auto.seconds) {
        this._checkpoint(panel, `after a ${Math.round(seconds)} s cell`);
      }
    }
  }

  private _panelOf(notebook: Notebook): NotebookPanel | null {
    const parent = notebook.parent as NotebookPanel | null;
    return parent && parent.context && parent.sessionContext ? parent : null;
  }

  private _checkpoint(panel: NotebookPanel, why: string, attempt = 0): void {
    if (panel.isDisposed) {
      return;
    }
    const session = this._checkpoints.sessionFor(panel);
    const model = session.model;
    if (model.availability.state !== 'ready' || model.busy) {
      return;
    }
    // Only when the kernel is idle: a checkpoint waits for nothing, but a running cell
    // would be frozen mid-way in the image.
    if (panel.sessionContext.session?.kernel?.status !== 'idle') {
      // The idle status follows the cell's reply: wait for it a little.
      if (attempt < 20) {
        window.setTimeout(() => this._checkpoint(panel, why, attempt + 1), 500);
      }
      return;
    }
    // The label follows the label setting (24-hour {time}), with the reason after it.
    void this._commands.execute(CommandIDs.checkpoint, { path: panel.context.path, reason: why });
  }

  private _checkpoints: IKernelCheckpoint;
  private _commands: CommandRegistry;
  private _timer = 0;
  private _started = new Map<string, number>();
  private _dirty = new Set<NotebookPanel>();
}

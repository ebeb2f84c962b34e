/**
 * Keeps one KernelCheckpointSession per open notebook and knows which one is current: what the
 * core plugin provides as IKernelCheckpoint. Only the core plugin sets its settings.
 */
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import type { KernelSpec } from '@jupyterlab/services';
import { UUID } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';
import { NOTEBOOK_METADATA_KEY, originOf } from './new-notebook';
import { KernelCheckpointSession } from './session';
import { DEFAULT_SETTINGS } from './settings';
import type { ICheckpointSettings } from './settings';
import type { IKernelCheckpoint, ISessionAdded } from './tokens';

/**
 * The notebook metadata key of the extension: `{ "notebook_id": "<uuid>" }`, and in a notebook
 * made by "Open in a new notebook" its `origin` (new-notebook.ts).
 */
export { NOTEBOOK_METADATA_KEY };

/**
 * A notebook's id, written once into its metadata by its first checkpoint: checkpoints carry
 * it, so a notebook keeps its history when it is renamed or moved, and a new notebook that gets
 * an old one's name is offered none of the old one's images. A notebook that was saved before is
 * saved again at once, so that the id is on disk with the first checkpoint that carries it (a
 * notebook with unsaved changes gets it with its next save; closed without one, it is found by its
 * path and its file's save time, which checkpoints record, and takes the id back: `adopt`).
 */
export function notebookIdentity(panel: NotebookPanel): KernelCheckpointSession.IIdentity {
  const read = (): string | null => {
    const meta = panel.model?.getMetadata(NOTEBOOK_METADATA_KEY) as
      { notebook_id?: unknown } | undefined;
    return typeof meta?.notebook_id === 'string' && meta.notebook_id ? meta.notebook_id : null;
  };
  const write = (id: string): void => {
    const model = panel.model;
    if (!model || read()) {
      return;
    }
    const wasClean = !model.dirty;
    const meta = (model.getMetadata(NOTEBOOK_METADATA_KEY) as object | undefined) ?? {};
    model.setMetadata(NOTEBOOK_METADATA_KEY, { ...meta, notebook_id: id });
    if (wasClean) {
      void panel.context.save().catch(() => undefined);
    }
  };
  return {
    get: read,
    origin: () => originOf(panel.model?.getMetadata(NOTEBOOK_METADATA_KEY)),
    // Checkpoints record it: a notebook closed without saving their id is found by it and its
    // path when opened again (the supervisor's NotebookIdentity), and takes the id back.
    saved: () => panel.context.contentsModel?.last_modified ?? null,
    adopt: write,
    ensure: () => {
      const known = read();
      if (known || !panel.model) {
        return known ?? '';
      }
      const id = UUID.uuid4();
      write(id);
      return id;
    }
  };
}

export class KernelCheckpointManager implements IKernelCheckpoint {
  constructor(options: KernelCheckpointManager.IOptions) {
    this._tracker = options.tracker;
    this._specsManager = options.specsManager;
    this._tracker.widgetAdded.connect((_, panel) => this.sessionFor(panel));
    this._tracker.currentChanged.connect(this._onCurrentChanged, this);
    this._tracker.forEach(panel => this.sessionFor(panel));
    this._onCurrentChanged();
  }

  get current(): KernelCheckpointSession | null {
    return this._current;
  }

  get currentChanged(): ISignal<this, KernelCheckpointSession | null> {
    return this._currentChanged;
  }

  get settings(): ICheckpointSettings {
    return this._settings;
  }

  get settingsChanged(): ISignal<this, ICheckpointSettings> {
    return this._settingsChanged;
  }

  set settings(value: ICheckpointSettings) {
    this._settings = value;
    this._settingsChanged.emit(value);
  }

  get sessionAdded(): ISignal<this, ISessionAdded> {
    return this._sessionAdded;
  }

  sessionFor(panel: NotebookPanel): KernelCheckpointSession {
    let session = this._sessions.get(panel);
    if (!session) {
      const created = new KernelCheckpointSession({
        sessionContext: panel.sessionContext,
        specsManager: this._specsManager,
        identity: notebookIdentity(panel),
        document: panel.context
      });
      session = created;
      this._sessions.set(panel, created);
      panel.disposed.connect(() => {
        this._sessions.delete(panel);
        created.dispose();
        if (this._current === created) {
          this._onCurrentChanged();
        }
      });
      this._sessionAdded.emit({ panel, session: created });
    }
    return session;
  }

  /** The open notebook panel of a path. */
  panelByPath(path: string): NotebookPanel | null {
    for (const panel of this._sessions.keys()) {
      if (panel.context.path === path) {
        return panel;
      }
    }
    return null;
  }

  /** The panel of a session. */
  panelOf(session: KernelCheckpointSession): NotebookPanel | null {
    for (const [panel, s] of this._sessions) {
      if (s === session) {
        return panel;
      }
    }
    return null;
  }

  private _onCurrentChanged(): void {
    const panel = this._tracker.currentWidget;
    const next = panel && !panel.isDisposed ? this.sessionFor(panel) : null;
    if (next !== this._current) {
      this._current = next;
      this._currentChanged.emit(next);
    }
  }

  private _tracker: INotebookTracker;
  private _specsManager?: KernelSpec.IManager;
  private _sessions = new Map<NotebookPanel, KernelCheckpointSession>();
  private _current: KernelCheckpointSession | null = null;
  private _settings: ICheckpointSettings = DEFAULT_SETTINGS;
  private _currentChanged = new Signal<this, KernelCheckpointSession | null>(this);
  private _settingsChanged = new Signal<this, ICheckpointSettings>(this);
  private _sessionAdded = new Signal<this, ISessionAdded>(this);
}

export namespace KernelCheckpointManager {
  export interface IOptions {
    tracker: INotebookTracker;
    specsManager?: KernelSpec.IManager;
  }
}

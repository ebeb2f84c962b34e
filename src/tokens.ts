/**
 * The public contract of the extension: the ids of its commands and of its panel, and the
 * IKernelCheckpoint token, through which other plugins (this extension's own secondary plugins
 * too) checkpoint or restore a notebook's kernel and follow its checkpoints.
 */
import type { NotebookPanel } from '@jupyterlab/notebook';
import { Token } from '@lumino/coreutils';
import type { ISignal } from '@lumino/signaling';
import type { KernelCheckpointSession } from './session';
import type { ICheckpointSettings } from './settings';

export type { CheckpointModel, ICheckpointNode, Availability, IBusyState } from './model';
export type { KernelCheckpointSession } from './session';
export type { CheckpointError } from './comm';
export type { AutoCheckpointMode, IAutoCheckpoint, ICheckpointSettings } from './settings';

/** The extension's commands. Every one takes an optional `path` (of a notebook; default: the
 * current one); restore, rename, delete and compare an `id` (of a checkpoint), or `selected:
 * true` for the one selected in the timeline (restore: `confirm: true` asks even when the
 * confirmRestore setting is off); checkpoint a `label`, or a `reason` to put after
 * the label the label setting makes. */
export namespace CommandIDs {
  export const checkpoint = 'kernel-checkpoint:checkpoint';
  export const restore = 'kernel-checkpoint:restore';
  export const showTimeline = 'kernel-checkpoint:show-timeline';
  export const rename = 'kernel-checkpoint:rename';
  export const remove = 'kernel-checkpoint:delete';
  /** Compare the selected checkpoint (or `id`) with the next one selected; again: stop. */
  export const compare = 'kernel-checkpoint:compare';
  /** Copy the notebook (`<name>-from-<label>.ipynb`), open it beside, restore `id` into it. */
  export const openInNewNotebook = 'kernel-checkpoint:open-in-new-notebook';
  export const refresh = 'kernel-checkpoint:refresh';
  export const switchKernel = 'kernel-checkpoint:switch-kernel';
  /** Find the first checkpoint where a Python `expression` is true (asked for when absent),
   * evaluated in forks of the checkpoints, and select it in the timeline. */
  export const findFirst = 'kernel-checkpoint:find-first';
}

/** Id of the timeline side panel in the shell. */
export const TIMELINE_ID = 'jp-kernel-checkpoint-timeline';

export const IKernelCheckpoint = new Token<IKernelCheckpoint>(
  'jupyterlab-kernel-checkpoint:IKernelCheckpoint',
  'Checkpoint and restore the kernels of notebooks, and follow their checkpoint timelines.'
);

/** A notebook panel and its session, just created. */
export interface ISessionAdded {
  readonly panel: NotebookPanel;
  readonly session: KernelCheckpointSession;
}

export interface IKernelCheckpoint {
  /** The session of the notebook the user works in (the notebook tracker's current one). */
  readonly current: KernelCheckpointSession | null;
  /** Emitted when `current` changes. */
  readonly currentChanged: ISignal<IKernelCheckpoint, KernelCheckpointSession | null>;
  /** The session of a notebook panel (created on first use). */
  sessionFor(panel: NotebookPanel): KernelCheckpointSession;
  /** Emitted when the session of a notebook panel is created. */
  readonly sessionAdded: ISignal<IKernelCheckpoint, ISessionAdded>;
  /** The open notebook panel of a path, or null. */
  panelByPath(path: string): NotebookPanel | null;
  /** The panel of a session, or null once it is closed. */
  panelOf(session: KernelCheckpointSession): NotebookPanel | null;
  /** The settings in force. */
  readonly settings: ICheckpointSettings;
  /** Emitted when the settings change. */
  readonly settingsChanged: ISignal<IKernelCheckpoint, ICheckpointSettings>;
}

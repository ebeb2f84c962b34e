/**
 * The public contract of the extension: other extensions can require
 * IKernelCheckpoint to checkpoint or restore a notebook's kernel, or to follow
 * its checkpoints.
 */
import type { NotebookPanel } from '@jupyterlab/notebook';
import { Token } from '@lumino/coreutils';
import type { ISignal } from '@lumino/signaling';
import type { KernelCheckpointSession } from './session';
import type { ICheckpointSettings } from './settings';

export type { CheckpointModel, ICheckpointNode, Availability, IBusyState } from './model';
export type { KernelCheckpointSession } from './session';
export type { CheckpointError } from './comm';

export const IKernelCheckpoint = new Token<IKernelCheckpoint>(
  'jupyterlab-kernel-checkpoint:IKernelCheckpoint',
  'Checkpoint and restore the kernels of notebooks, and follow their checkpoint timelines.'
);

export interface IKernelCheckpoint {
  /** The session of the notebook the user works in (the notebook tracker's current one). */
  readonly current: KernelCheckpointSession | null;
  /** Emitted when `current` changes. */
  readonly currentChanged: ISignal<IKernelCheckpoint, KernelCheckpointSession | null>;
  /** The session of a notebook panel (created on first use). */
  sessionFor(panel: NotebookPanel): KernelCheckpointSession;
  /** The settings in force. */
  readonly settings: ICheckpointSettings;
  /** Emitted when the settings change. */
  readonly settingsChanged: ISignal<IKernelCheckpoint, ICheckpointSettings>;
}

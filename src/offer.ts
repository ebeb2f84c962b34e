/**
 * The restore offer for a kernel that is new: when a notebook's fresh kernel (no checkpoint in
 * its history) lists saved images of the notebook, a notification says so, once per kernel,
 * with actions to restore one or to open the timeline (which shows the same offer).
 */
import { Notification } from '@jupyterlab/apputils';
import type { CommandRegistry } from '@lumino/commands';
import { relativeTime } from './format';
import type { KernelCheckpointSession } from './session';
import { checkpointName } from './text';
import { CommandIDs } from './tokens';
import type { IKernelCheckpoint } from './tokens';

export class RestoreOffer {
  constructor(manager: IKernelCheckpoint, commands: CommandRegistry) {
    this._commands = commands;
    manager.sessionAdded.connect((_, { session }) => {
      session.model.changed.connect(() => this._check(session));
    });
  }

  private _check(session: KernelCheckpointSession): void {
    const model = session.model;
    const kernel = session.sessionContext.session?.kernel?.id;
    if (
      !kernel ||
      this._offered.has(kernel) ||
      !model.loaded ||
      !model.isFresh ||
      model.scope !== 'session' ||
      model.availability.state !== 'ready' ||
      model.checkpoints.length === 0
    ) {
      return;
    }
    this._offered.add(kernel);
    const newest = model.checkpoints[model.checkpoints.length - 1];
    const count = model.checkpoints.length;
    const name = session.path.split('/').pop() ?? session.path;
    const path = session.path;
    Notification.info(
      `${name} has ${count} saved kernel checkpoint${count === 1 ? '' : 's'}; the newest is "${checkpointName(
        newest
      )}", ${relativeTime(newest.created)}. This kernel starts empty: restore one to continue.`,
      {
        autoClose: 15000,
        actions: [
          {
            label: 'Restore…',
            caption: 'Choose a kernel checkpoint to restore',
            displayType: 'accent',
            callback: () => void this._commands.execute(CommandIDs.restore, { path })
          },
          {
            label: 'Show timeline',
            caption: 'Open the kernel checkpoint timeline',
            callback: () => void this._commands.execute(CommandIDs.showTimeline)
          }
        ]
      }
    );
  }

  private _commands: CommandRegistry;
  private _offered = new Set<string>();
}

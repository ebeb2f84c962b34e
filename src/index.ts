/**
 * jupyterlab-kernel-checkpoint: checkpoint a live kernel, restore it later from a timeline.
 *
 * This file only declares the plugins.
 */
import { ILayoutRestorer } from '@jupyterlab/application';
import type { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, IToolbarWidgetRegistry } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import type { NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { AutoCheckpointer } from './auto';
import { CommandIDs, TIMELINE_ID, addCommands, notifyError } from './commands';
import { KernelCheckpointManager } from './manager';
import { readSettings } from './settings';
import { IKernelCheckpoint } from './tokens';
import { CheckpointButton } from './widgets/button';
import { CheckpointStatus } from './widgets/status';
import { TimelinePanel } from './widgets/timeline';

export const PLUGIN_ID = 'jupyterlab-kernel-checkpoint:plugin';

/** Name of the notebook toolbar item (schema/plugin.json, jupyter.lab.toolbars). */
export const TOOLBAR_ITEM = 'kernelCheckpoint';

/**
 * The core plugin: sessions, commands, settings, the toolbar button.
 */
const plugin: JupyterFrontEndPlugin<IKernelCheckpoint> = {
  id: PLUGIN_ID,
  description: 'Checkpoint and restore Jupyter kernels from JupyterLab.',
  autoStart: true,
  provides: IKernelCheckpoint,
  requires: [INotebookTracker],
  optional: [ISettingRegistry, ICommandPalette, IToolbarWidgetRegistry],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    toolbarRegistry: IToolbarWidgetRegistry | null
  ): IKernelCheckpoint => {
    console.log('jupyterlab-kernel-checkpoint is activated');
    const manager = new KernelCheckpointManager({
      tracker,
      specsManager: app.serviceManager.kernelspecs
    });
    addCommands(app, manager, palette);

    manager.sessionAdded.connect((_, { session }) => {
      session.failed.connect((__, error) => {
        // Errors of commands are notified by the commands; the rest (e.g. a list
        // failing after a reconnect) here.
        if (error.action === 'list') {
          notifyError(error, manager, app, 'list');
        }
      });
    });

    // Re-evaluate enabled states of the commands when a session's state changes.
    const notify = () => app.commands.notifyCommandChanged();
    manager.currentChanged.connect((_, session) => {
      if (session) {
        session.model.changed.connect(notify);
        session.model.busyChanged.connect(notify);
      }
      notify();
    });

    if (toolbarRegistry) {
      toolbarRegistry.addFactory<NotebookPanel>(
        'Notebook',
        TOOLBAR_ITEM,
        panel =>
          new CheckpointButton({
            panel,
            session: manager.sessionFor(panel),
            commands: app.commands
          })
      );
    }

    new AutoCheckpointer(manager, app.commands);

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            manager.settings = readSettings(settings.composite);
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.error('jupyterlab-kernel-checkpoint: could not load settings', reason);
        });
    }
    return manager;
  }
};

/**
 * The timeline side panel and the status bar item.
 */
const timelinePlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-kernel-checkpoint:timeline',
  description: 'The kernel checkpoint timeline panel and status bar item.',
  autoStart: true,
  requires: [IKernelCheckpoint],
  optional: [ILayoutRestorer, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    checkpoints: IKernelCheckpoint,
    restorer: ILayoutRestorer | null,
    statusBar: IStatusBar | null
  ) => {
    const manager = checkpoints as KernelCheckpointManager;
    const panel = new TimelinePanel({ id: TIMELINE_ID, manager, commands: app.commands });
    app.shell.add(panel, 'right', { rank: 650 });
    if (restorer) {
      restorer.add(panel, TIMELINE_ID);
    }

    let opened = false;
    const maybeOpen = () => {
      if (!opened && manager.settings.openPanelOnStart) {
        opened = true;
        void app.restored.then(() => app.commands.execute(CommandIDs.showTimeline));
      }
    };
    manager.settingsChanged.connect(maybeOpen);
    maybeOpen();

    if (statusBar) {
      const item = new CheckpointStatus(manager, app.commands);
      statusBar.registerStatusItem('jupyterlab-kernel-checkpoint:status', {
        item,
        align: 'left',
        rank: 4
      });
    }
  }
};

export default [plugin, timelinePlugin];
export * from './tokens';
export { CommandIDs } from './commands';

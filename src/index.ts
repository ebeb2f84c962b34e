/**
 * jupyterlab-kernel-checkpoint: checkpoint a live kernel, restore it later from a timeline.
 *
 * This file only declares the plugins; tokens.ts is the public contract.
 */
import { ILayoutRestorer } from '@jupyterlab/application';
import type { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, IToolbarWidgetRegistry } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import type { NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { AutoCheckpointer } from './auto';
import { addCommands } from './commands';
import { KernelCheckpointManager } from './manager';
import { RestoreOffer } from './offer';
import { followSettings } from './settings';
import { CommandIDs, IKernelCheckpoint, TIMELINE_ID } from './tokens';
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
    new RestoreOffer(manager, app.commands);
    if (settingRegistry) {
      followSettings(settingRegistry, PLUGIN_ID, settings => {
        manager.settings = settings;
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
    const panel = new TimelinePanel({ id: TIMELINE_ID, checkpoints, commands: app.commands });
    app.shell.add(panel, 'right', { rank: 650 });
    if (restorer) {
      restorer.add(panel, TIMELINE_ID);
    }

    let opened = false;
    const maybeOpen = () => {
      if (!opened && checkpoints.settings.openPanelOnStart) {
        opened = true;
        void app.restored.then(() => app.commands.execute(CommandIDs.showTimeline));
      }
    };
    checkpoints.settingsChanged.connect(maybeOpen);
    maybeOpen();

    if (statusBar) {
      statusBar.registerStatusItem('jupyterlab-kernel-checkpoint:status', {
        item: new CheckpointStatus(checkpoints, app.commands),
        align: 'left',
        rank: 4
      });
    }
  }
};

export default [plugin, timelinePlugin];
export * from './tokens';

/**
 * Every command of the extension, in one registry.
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, InputDialog, Notification, showDialog } from '@jupyterlab/apputils';
import type { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';
import { CheckpointError } from './comm';
import { formatBytes, formatDuration } from './format';
import { notebookIdentity } from './manager';
import { openInNewNotebook } from './new-notebook';
import { checkpointIcon, compareIcon, restoreIcon, timelineIcon } from './icons';
import type { KernelCheckpointSession } from './session';
import { MID_CELL_RESTORE, checkpointName, formatLabel } from './text';
import { CommandIDs, TIMELINE_ID } from './tokens';
import type { IKernelCheckpoint } from './tokens';
import { findFirstModelOf } from './widgets/find-first';
import { CheckpointPicker } from './widgets/picker';

/** Human name of an action, for messages. */
function actionTitle(action: string | undefined): string {
  switch (action) {
    case 'checkpoint':
      return 'Checkpoint';
    case 'restore':
      return 'Restore';
    case 'delete':
      return 'Delete';
    case 'label':
      return 'Rename';
    case 'list':
      return 'Listing checkpoints';
    case 'bisect':
      return 'Find the first checkpoint';
    default:
      return 'Kernel checkpoint';
  }
}

/** Highest execution count among a notebook's code cells, or null. */
function executionCount(panel: NotebookPanel | null): number | null {
  const cells = panel?.content.model?.cells;
  if (!cells) {
    return null;
  }
  let max: number | null = null;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    const count =
      cell.type === 'code' ? (cell as { executionCount?: number | null }).executionCount : null;
    if (typeof count === 'number' && (max === null || count > max)) {
      max = count;
    }
  }
  return max;
}

/**
 * Show a failure as a notification carrying the supervisor's reason.
 */
function notifyError(
  error: unknown,
  manager: IKernelCheckpoint,
  app: JupyterFrontEnd,
  action?: string
): void {
  const e =
    error instanceof CheckpointError
      ? error
      : new CheckpointError(
          'engine_failed',
          error instanceof Error ? error.message : String(error)
        );
  const title = actionTitle(e.action ?? action);
  const actions: Notification.IAction[] = [];
  const session = manager.current;
  const availability = session?.model.availability;
  if (
    e.code === 'not_checkpointable' &&
    availability?.state === 'unavailable' &&
    availability.switchTo
  ) {
    const target = availability.switchTo;
    actions.push({
      label: `Switch to ${target.displayName}`,
      caption: 'Restart this notebook on the checkpointable kernel',
      displayType: 'accent',
      callback: () => {
        void app.commands.execute(CommandIDs.switchKernel, { name: target.name });
      }
    });
  }
  if (e.detail) {
    console.error(`kernel-checkpoint: ${title} failed (${e.code}): ${e.message}\n${e.detail}`);
  }
  Notification.error(`${title} failed: ${e.message}`, { autoClose: 15000, actions });
}

export function addCommands(
  app: JupyterFrontEnd,
  manager: IKernelCheckpoint,
  palette: { addItem(options: { command: string; category: string }): unknown } | null
): void {
  const { commands, shell } = app;

  const sessionOf = (args: Record<string, unknown>): KernelCheckpointSession | null => {
    const path = typeof args.path === 'string' ? args.path : null;
    if (path) {
      const panel = manager.panelByPath(path);
      if (panel) {
        return manager.sessionFor(panel);
      }
    }
    return manager.current;
  };

  /** The checkpoint a command acts on: its `id`, or with `selected`, the timeline's selection. */
  const idOf = (args: Record<string, unknown>): string | null => {
    if (typeof args.id === 'string') {
      return args.id;
    }
    return args.selected ? (sessionOf(args)?.model.selectedId ?? null) : null;
  };

  const ready = (s: KernelCheckpointSession | null): boolean =>
    !!s && s.model.availability.state === 'ready' && !s.model.busy;

  const requireSession = (args: Record<string, unknown>): KernelCheckpointSession => {
    const session = sessionOf(args);
    if (!session) {
      throw new CheckpointError('kernel_not_running', 'Open a notebook first.');
    }
    return session;
  };

  const hasIdleSession = (args: Record<string, unknown>): boolean => {
    const s = sessionOf(args);
    return !!s && !s.model.busy;
  };

  // Failures outside a command (a list after a reconnect); each command notifies its own.
  manager.sessionAdded.connect((_, { session }) => {
    session.failed.connect((__, error) => {
      if (error.action === 'list') {
        notifyError(error, manager, app, 'list');
      }
    });
  });

  // The commands' enabled states follow the current session's state.
  const notify = () => commands.notifyCommandChanged();
  manager.currentChanged.connect((_, session) => {
    if (session) {
      session.model.changed.connect(notify);
      session.model.busyChanged.connect(notify);
    }
    notify();
  });

  commands.addCommand(CommandIDs.checkpoint, {
    label: 'Checkpoint Kernel',
    caption: 'Save the whole kernel process (every variable) as an image you can restore later',
    icon: checkpointIcon,
    isEnabled: hasIdleSession,
    execute: async args => {
      try {
        const session = requireSession(args);
        const panel = manager.panelOf(session);
        const reason = typeof args.reason === 'string' && args.reason ? ` (${args.reason})` : '';
        const label =
          typeof args.label === 'string'
            ? args.label
            : (
                formatLabel(manager.settings.labelFormat, {
                  notebookPath: session.path,
                  count: session.executionCount ?? executionCount(panel),
                  n: session.model.checkpoints.length + 1,
                  date: new Date()
                }) + reason
              ).trim();
        const checkpoint = await session.checkpoint(label || null);
        if (checkpoint) {
          Notification.success(
            `Checkpoint "${checkpointName(checkpoint)}" saved (${formatBytes(
              checkpoint.image_bytes
            )} in ${formatDuration(checkpoint.duration_ms)}).`,
            { autoClose: 4000 }
          );
        }
        return checkpoint?.id;
      } catch (error) {
        notifyError(error, manager, app, 'checkpoint');
      }
    }
  });

  commands.addCommand(CommandIDs.restore, {
    label: args => (args.id || args.selected ? 'Restore Checkpoint' : 'Restore Kernel…'),
    caption: 'Replace the running kernel by a saved checkpoint image',
    icon: restoreIcon,
    isEnabled: hasIdleSession,
    execute: async args => {
      try {
        const session = requireSession(args);
        let id = idOf(args);
        if (!id) {
          if (session.model.availability.state === 'ready' && !session.model.loaded) {
            await session.refresh();
          }
          const checkpoints = session.model.checkpoints;
          if (session.model.availability.state === 'unavailable') {
            throw new CheckpointError(
              'not_checkpointable',
              session.model.availability.message,
              'restore'
            );
          }
          if (checkpoints.length === 0) {
            await showDialog({
              title: 'Restore Kernel',
              body: 'There is no saved checkpoint for this notebook yet.',
              buttons: [Dialog.okButton()]
            });
            return;
          }
          const result = await showDialog({
            title: 'Restore Kernel',
            body: new CheckpointPicker(checkpoints, session.model.currentId),
            buttons: [
              Dialog.cancelButton(),
              Dialog.warnButton({ label: 'Restore', ariaLabel: 'Restore the chosen checkpoint' })
            ]
          });
          if (!result.button.accept || !result.value) {
            return;
          }
          id = result.value;
        } else if (manager.settings.confirmRestore || args.confirm === true) {
          const c = session.model.get(id);
          const body = `Replace the running kernel by checkpoint "${
            c ? checkpointName(c) : id
          }"? Everything done since that checkpoint is lost from the kernel's memory.`;
          const paragraphs = c?.state?.cell_running ? [body, MID_CELL_RESTORE] : [body];
          if (!(await confirmWarning('Restore Kernel', paragraphs, 'Restore'))) {
            return;
          }
        }
        await session.restore(id);
        const c = session.model.get(id);
        Notification.success(`Kernel restored from "${c ? checkpointName(c) : id}".`, {
          autoClose: 4000
        });
      } catch (error) {
        notifyError(error, manager, app, 'restore');
      }
    }
  });

  commands.addCommand(CommandIDs.showTimeline, {
    label: 'Show Checkpoint Timeline',
    caption: 'Open the side panel with the tree of kernel checkpoints',
    icon: timelineIcon,
    execute: () => {
      shell.activateById(TIMELINE_ID);
    }
  });

  commands.addCommand(CommandIDs.rename, {
    label: 'Rename Checkpoint…',
    caption: 'Give a checkpoint a new label',
    isEnabled: args => ready(sessionOf(args)) && idOf(args) !== null,
    execute: async args => {
      try {
        const session = requireSession(args);
        const id = idOf(args);
        if (!id) {
          return;
        }
        const c = session.model.get(id);
        const result = await InputDialog.getText({
          title: 'Rename Checkpoint',
          label: 'Label',
          text: c?.label ?? '',
          placeholder: 'Label of the checkpoint',
          okLabel: 'Rename'
        });
        if (!result.button.accept) {
          return;
        }
        const label = (result.value ?? '').trim();
        await session.rename(id, label || null);
      } catch (error) {
        notifyError(error, manager, app, 'label');
      }
    }
  });

  commands.addCommand(CommandIDs.remove, {
    label: 'Delete Checkpoint…',
    caption: 'Delete a checkpoint image from the store',
    isEnabled: args => ready(sessionOf(args)) && idOf(args) !== null,
    execute: async args => {
      try {
        const session = requireSession(args);
        const id = idOf(args);
        if (!id) {
          return;
        }
        const c = session.model.get(id);
        const children = session.model.childrenOf(id).length;
        const body = `Delete checkpoint "${c ? checkpointName(c) : id}" and its image${
          c ? ` (${formatBytes(c.image_bytes)})` : ''
        }? This cannot be undone.${
          children > 0
            ? ` It has ${children} child checkpoint${
                children === 1 ? '' : 's'
              }: they are kept, and shown as roots.`
            : ''
        }`;
        if (!(await confirmWarning('Delete Checkpoint', [body], 'Delete'))) {
          return;
        }
        await session.remove(id);
      } catch (error) {
        notifyError(error, manager, app, 'delete');
      }
    }
  });

  commands.addCommand(CommandIDs.openInNewNotebook, {
    label: 'Open in a New Notebook',
    caption:
      'Copy this notebook and start its kernel from the checkpoint, beside the running one ' +
      '(both stay usable)',
    isEnabled: args => ready(sessionOf(args)) && !!idOf(args),
    execute: async args => {
      try {
        const session = requireSession(args);
        const id = idOf(args);
        const c = id ? session.model.get(id) : undefined;
        const panel = manager.panelOf(session);
        if (!c || !panel) {
          throw new CheckpointError(
            'unknown_checkpoint',
            id ? `Checkpoint ${id} is not in this notebook's timeline.` : 'Choose a checkpoint.',
            'restore'
          );
        }
        const path = await openInNewNotebook(
          { commands, contents: app.serviceManager.contents, checkpoints: manager },
          panel,
          session,
          c,
          notebookIdentity(panel).ensure()
        );
        Notification.success(`Opened "${checkpointName(c)}" in ${path}.`, { autoClose: 4000 });
      } catch (error) {
        notifyError(error, manager, app, 'restore');
      }
    }
  });

  commands.addCommand(CommandIDs.compare, {
    label: args =>
      sessionOf(args)?.model.compareId ? 'Stop Comparing Checkpoints' : 'Compare With…',
    caption: 'Compare the variables of this checkpoint with those of the next one you select',
    icon: compareIcon,
    isEnabled: args => {
      const s = sessionOf(args);
      return !!s && (s.model.compareId !== null || idOf(args) !== null);
    },
    execute: args => {
      const session = sessionOf(args);
      if (!session) {
        return;
      }
      const model = session.model;
      if (model.compareId) {
        model.setCompare(null);
      } else {
        model.setCompare(idOf(args));
      }
    }
  });

  commands.addCommand(CommandIDs.findFirst, {
    label: 'Find the First Checkpoint Where…',
    caption:
      'Evaluate a Python expression in forks of the checkpoints (never in this kernel) and ' +
      'select the first checkpoint where it is true',
    isEnabled: args => ready(sessionOf(args)),
    execute: async args => {
      try {
        const session = requireSession(args);
        let expression = typeof args.expression === 'string' ? args.expression : '';
        if (!expression) {
          const asked = await InputDialog.getText({
            title: 'Find the First Checkpoint Where…',
            label: 'Python expression, evaluated in a fork of each checkpoint',
            placeholder: 'loss > 1.0',
            okLabel: 'Find'
          });
          if (!asked.button.accept || !asked.value?.trim()) {
            return;
          }
          expression = asked.value;
        }
        shell.activateById(TIMELINE_ID);
        const search = findFirstModelOf(session);
        await search.find(expression);
        Notification.info(search.summary(), { autoClose: 8000 });
      } catch (error) {
        notifyError(error, manager, app, 'bisect');
      }
    }
  });

  // The timeline's context menu: the row under the pointer is selected before it opens.
  const rowSelector = '.jp-KernelCheckpoint-node';
  [
    CommandIDs.restore,
    CommandIDs.openInNewNotebook,
    CommandIDs.rename,
    CommandIDs.remove,
    CommandIDs.compare,
    CommandIDs.checkpoint
  ].forEach((command, rank) => {
    app.contextMenu.addItem({ command, selector: rowSelector, rank, args: { selected: true } });
  });

  commands.addCommand(CommandIDs.refresh, {
    label: args =>
      args.scope === 'all' ? 'Show All Saved Kernel Images' : 'Refresh Checkpoint Timeline',
    caption: 'List the checkpoints again',
    isEnabled: args => sessionOf(args)?.model.availability.state === 'ready',
    execute: async args => {
      try {
        const session = requireSession(args);
        const scope = args.scope === 'all' || args.scope === 'session' ? args.scope : undefined;
        await session.refresh(scope);
      } catch (error) {
        notifyError(error, manager, app, 'list');
      }
    }
  });

  commands.addCommand(CommandIDs.switchKernel, {
    label: args =>
      typeof args.displayName === 'string'
        ? `Switch to ${args.displayName}`
        : 'Switch to the Checkpointable Kernel',
    caption: 'Restart this notebook on the kernel that runs under the checkpoint supervisor',
    isEnabled: args => {
      const a = sessionOf(args)?.model.availability;
      return typeof args.name === 'string' || (a?.state === 'unavailable' && !!a.switchTo);
    },
    execute: async args => {
      const session = sessionOf(args);
      if (!session) {
        return;
      }
      const a = session.model.availability;
      const name =
        typeof args.name === 'string'
          ? args.name
          : a.state === 'unavailable' && a.switchTo
            ? a.switchTo.name
            : null;
      if (!name) {
        return;
      }
      try {
        await session.sessionContext.changeKernel({ name });
      } catch (error) {
        Notification.error(`Could not switch kernel: ${String(error)}`, { autoClose: 15000 });
      }
    }
  });

  if (palette) {
    const category = 'Kernel Checkpoint';
    for (const command of [
      CommandIDs.checkpoint,
      CommandIDs.restore,
      CommandIDs.showTimeline,
      CommandIDs.refresh,
      CommandIDs.switchKernel,
      CommandIDs.findFirst
    ]) {
      palette.addItem({ command, category });
    }
  }
}

/** Asks before something that cannot be undone; true when the person confirmed. */
async function confirmWarning(
  title: string,
  paragraphs: string[],
  action: string
): Promise<boolean> {
  const body = new Widget();
  body.addClass('jp-KernelCheckpoint-confirm');
  for (const text of paragraphs) {
    const p = document.createElement('p');
    p.textContent = text;
    body.node.appendChild(p);
  }
  const result = await showDialog({
    title,
    body,
    buttons: [
      Dialog.cancelButton(),
      Dialog.warnButton({ label: action, ariaLabel: `Confirm ${action.toLowerCase()}` })
    ]
  });
  return result.button.accept;
}

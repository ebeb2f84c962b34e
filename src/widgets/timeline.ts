/**
 * The timeline side panel: the current notebook's checkpoint tree.
 */
import type { CommandRegistry } from '@lumino/commands';
import type { ReadonlyPartialJSONObject } from '@lumino/coreutils';
import type { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';
import { deleteIcon, editIcon, refreshIcon } from '@jupyterlab/ui-components';
import type { LabIcon } from '@jupyterlab/ui-components';
import { formatBytes, formatDuration, relativeTime } from '../format';
import { checkpointIcon, restoreIcon, timelineIcon } from '../icons';
import type { ICheckpointNode } from '../model';
import type { KernelCheckpointSession } from '../session';
import { busyText, checkpointName } from '../text';
import { CommandIDs } from '../tokens';
import type { IKernelCheckpoint } from '../tokens';

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export class TimelinePanel extends Widget {
  constructor(options: TimelinePanel.IOptions) {
    super();
    this._checkpoints = options.checkpoints;
    this._commands = options.commands;
    this.id = options.id;
    this.addClass('jp-KernelCheckpoint-timeline');
    this.title.icon = timelineIcon;
    this.title.caption = 'Kernel Checkpoint Timeline';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Kernel checkpoint timeline');
    this._checkpoints.currentChanged.connect(this._onCurrentChanged, this);
    this._onCurrentChanged();
  }

  /** The session shown. */
  get session(): KernelCheckpointSession | null {
    return this._session;
  }

  dispose(): void {
    window.clearInterval(this._clock);
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    this._clock = window.setInterval(() => this.update(), 30_000);
    this.update();
  }

  protected onBeforeDetach(msg: Message): void {
    window.clearInterval(this._clock);
    super.onBeforeDetach(msg);
  }

  protected onUpdateRequest(msg: Message): void {
    super.onUpdateRequest(msg);
    this._render();
  }

  private _onCurrentChanged(): void {
    const next = this._checkpoints.current;
    if (this._session === next) {
      return;
    }
    if (this._session && !this._session.isDisposed) {
      this._session.model.changed.disconnect(this._onModelChanged, this);
      this._session.model.busyChanged.disconnect(this._onModelChanged, this);
    }
    this._session = next;
    if (next) {
      next.model.changed.connect(this._onModelChanged, this);
      next.model.busyChanged.connect(this._onModelChanged, this);
    }
    this.update();
  }

  private _onModelChanged(): void {
    this.update();
  }

  private _button(
    label: string,
    ariaLabel: string,
    command: string,
    args: ReadonlyPartialJSONObject,
    className = '',
    icon?: LabIcon,
    iconOnly = false
  ): HTMLButtonElement {
    const button = el('button', `jp-Button jp-mod-styled jp-KernelCheckpoint-button ${className}`);
    button.type = 'button';
    if (icon) {
      const holder = el('span', 'jp-KernelCheckpoint-buttonIcon');
      holder.setAttribute('aria-hidden', 'true');
      icon.element({ container: holder });
      button.appendChild(holder);
    }
    if (iconOnly && icon) {
      button.classList.add('jp-mod-iconOnly');
    } else {
      button.appendChild(el('span', 'jp-KernelCheckpoint-buttonLabel', label));
    }
    button.setAttribute('aria-label', ariaLabel);
    button.title = ariaLabel;
    button.disabled = !this._commands.isEnabled(command, args);
    button.addEventListener('click', event => {
      event.stopPropagation();
      void this._commands.execute(command, args);
    });
    return button;
  }

  private _render(): void {
    const node = this.node;
    node.textContent = '';
    const session = this._session;
    const header = el('div', 'jp-KernelCheckpoint-header');
    header.appendChild(el('h2', 'jp-KernelCheckpoint-title', 'Checkpoints'));
    node.appendChild(header);

    if (!session || session.isDisposed) {
      node.appendChild(
        el('p', 'jp-KernelCheckpoint-empty', "Open a notebook to see its kernel's checkpoints.")
      );
      return;
    }
    const path = session.path;
    header.appendChild(el('div', 'jp-KernelCheckpoint-notebook', path.split('/').pop() ?? path));
    const model = session.model;
    const args = { path };
    const a = model.availability;

    if (a.state === 'no-kernel') {
      node.appendChild(el('p', 'jp-KernelCheckpoint-empty', 'The notebook has no running kernel.'));
      return;
    }
    if (a.state === 'connecting') {
      node.appendChild(
        el('p', 'jp-KernelCheckpoint-empty', 'Connecting to the kernel checkpoint supervisor…')
      );
      return;
    }
    if (a.state === 'unavailable') {
      const box = el('div', 'jp-KernelCheckpoint-unavailable');
      box.setAttribute('role', 'note');
      box.appendChild(
        el('p', 'jp-KernelCheckpoint-unavailableTitle', 'This kernel cannot be checkpointed')
      );
      box.appendChild(el('p', '', a.message));
      if (a.switchTo) {
        box.appendChild(
          el(
            'p',
            '',
            `Restart the notebook on "${a.switchTo.displayName}": the same kernel, run under the checkpoint supervisor. Its variables start empty.`
          )
        );
        box.appendChild(
          this._button(
            `Switch to ${a.switchTo.displayName}`,
            `Switch this notebook to the kernel ${a.switchTo.displayName}`,
            CommandIDs.switchKernel,
            { ...args, name: a.switchTo.name, displayName: a.switchTo.displayName },
            'jp-mod-accept'
          )
        );
      } else {
        box.appendChild(
          el(
            'p',
            '',
            'Install a checkpointable kernel with "kernel-checkpoint install", then choose it from the kernel menu.'
          )
        );
      }
      node.appendChild(box);
      return;
    }

    // Ready.
    const toolbar = el('div', 'jp-KernelCheckpoint-actions');
    toolbar.appendChild(
      this._button(
        'Checkpoint',
        'Checkpoint kernel',
        CommandIDs.checkpoint,
        args,
        'jp-mod-accept jp-KernelCheckpoint-checkpointButton',
        checkpointIcon
      )
    );
    toolbar.appendChild(
      this._button(
        'Refresh',
        'Refresh the checkpoint list',
        CommandIDs.refresh,
        args,
        'jp-KernelCheckpoint-refresh',
        refreshIcon
      )
    );
    const scopeAll = model.scope === 'all';
    toolbar.appendChild(
      this._button(
        scopeAll ? "This notebook's images" : 'Show all images',
        scopeAll ? 'Show only the images of this notebook' : 'Show every image in the store',
        CommandIDs.refresh,
        { ...args, scope: scopeAll ? 'session' : 'all' },
        'jp-KernelCheckpoint-scopeButton'
      )
    );
    node.appendChild(toolbar);

    const status = model.status;
    if (status && !status.engine_ok) {
      const warn = el('p', 'jp-KernelCheckpoint-warning');
      warn.setAttribute('role', 'alert');
      warn.textContent = `The ${status.engine.name} engine cannot run here: ${
        status.engine_problem ?? 'unknown reason'
      }`;
      node.appendChild(warn);
    }

    const busy = model.busy;
    if (busy) {
      const line = el('div', 'jp-KernelCheckpoint-progress');
      line.setAttribute('role', 'status');
      line.setAttribute('aria-live', 'polite');
      line.appendChild(el('span', 'jp-KernelCheckpoint-spinner'));
      line.appendChild(el('span', '', busyText(busy.action, busy.stage, busy.message)));
      node.appendChild(line);
    }

    const checkpoints = model.checkpoints;
    if (model.isFresh && checkpoints.length > 0) {
      const offer = el('div', 'jp-KernelCheckpoint-offer');
      offer.appendChild(
        el(
          'p',
          '',
          scopeAll
            ? 'This kernel has no checkpoints yet. Every saved image in the store:'
            : 'This kernel has no checkpoints yet. Restore the session from a saved image made for this notebook:'
        )
      );
      node.appendChild(offer);
    }
    if (checkpoints.length === 0) {
      node.appendChild(
        el(
          'p',
          'jp-KernelCheckpoint-empty',
          model.loaded
            ? scopeAll
              ? 'The store holds no images.'
              : 'No checkpoints yet. Press "Checkpoint kernel" to save the kernel as it is now.'
            : 'Loading…'
        )
      );
      this._footer(node);
      return;
    }

    const tree = el('ul', 'jp-KernelCheckpoint-tree');
    tree.setAttribute('role', 'tree');
    tree.setAttribute('aria-label', 'Checkpoint tree');
    const now = Date.now();
    for (const root of model.tree()) {
      tree.appendChild(this._renderNode(root, args, now, !!busy));
    }
    node.appendChild(tree);
    this._footer(node);
  }

  /** Engine and store of the supervisor, for the curious and for tests. */
  private _footer(node: HTMLElement): void {
    const status = this._session?.model.status;
    if (!status) {
      return;
    }
    const footer = el('div', 'jp-KernelCheckpoint-footer');
    footer.appendChild(
      el('span', 'jp-KernelCheckpoint-engine', `${status.engine.name} ${status.engine.version}`)
    );
    if (status.store) {
      const store = el('span', 'jp-KernelCheckpoint-store', status.store);
      store.title = 'Image store';
      footer.appendChild(store);
    }
    node.appendChild(footer);
  }

  private _renderNode(
    n: ICheckpointNode,
    args: { path: string },
    now: number,
    busy: boolean
  ): HTMLLIElement {
    const c = n.checkpoint;
    const name = checkpointName(c);
    const li = el('li', 'jp-KernelCheckpoint-item');
    li.setAttribute('role', 'treeitem');
    li.setAttribute('aria-label', `Checkpoint ${name}${n.isCurrent ? ' (current)' : ''}`);
    li.dataset.checkpointId = c.id;
    if (n.children.length > 0) {
      li.setAttribute('aria-expanded', 'true');
    }
    if (n.children.length > 1) {
      li.classList.add('jp-mod-branch');
    }

    const row = el('div', 'jp-KernelCheckpoint-node');
    row.dataset.checkpointId = c.id;
    if (n.isCurrent) {
      row.classList.add('jp-mod-current');
      row.setAttribute('aria-current', 'true');
    } else if (n.onCurrentPath) {
      row.classList.add('jp-mod-ancestor');
    }
    row.appendChild(el('span', 'jp-KernelCheckpoint-dot'));

    const body = el('div', 'jp-KernelCheckpoint-body');
    const title = el('div', 'jp-KernelCheckpoint-label', name);
    title.title = `${c.id}\n${c.created}`;
    if (n.isCurrent) {
      title.appendChild(el('span', 'jp-KernelCheckpoint-badge', 'current'));
    }
    body.appendChild(title);

    const meta = el('div', 'jp-KernelCheckpoint-meta');
    const time = el('time', 'jp-KernelCheckpoint-time', relativeTime(c.created, now));
    time.dateTime = c.created;
    time.title = new Date(c.created).toLocaleString();
    meta.appendChild(time);
    const count = c.state ? `[${c.state.execution_count}]` : '[?]';
    const countEl = el('span', 'jp-KernelCheckpoint-count', count);
    countEl.title = 'Execution count';
    meta.appendChild(countEl);
    const size = el('span', 'jp-KernelCheckpoint-size', formatBytes(c.image_bytes));
    size.title = 'Image size';
    meta.appendChild(size);
    const duration = el('span', 'jp-KernelCheckpoint-duration', formatDuration(c.duration_ms));
    duration.title = 'Time taken to checkpoint';
    meta.appendChild(duration);
    body.appendChild(meta);
    if (c.notebook_path && c.notebook_path !== args.path) {
      body.appendChild(el('div', 'jp-KernelCheckpoint-origin', c.notebook_path));
    }

    const actions = el('div', 'jp-KernelCheckpoint-nodeActions');
    const idArgs = { ...args, id: c.id };
    const restore = this._button(
      'Restore',
      `Restore checkpoint ${name}`,
      CommandIDs.restore,
      idArgs,
      'jp-KernelCheckpoint-restore',
      restoreIcon
    );
    const rename = this._button(
      'Rename',
      `Rename checkpoint ${name}`,
      CommandIDs.rename,
      idArgs,
      'jp-KernelCheckpoint-rename',
      editIcon,
      true
    );
    const remove = this._button(
      'Delete',
      `Delete checkpoint ${name}`,
      CommandIDs.remove,
      idArgs,
      'jp-KernelCheckpoint-delete',
      deleteIcon,
      true
    );
    if (busy) {
      restore.disabled = rename.disabled = remove.disabled = true;
    }
    actions.append(restore, rename, remove);
    body.appendChild(actions);
    row.appendChild(body);
    li.appendChild(row);

    if (n.children.length > 0) {
      const group = el('ul', 'jp-KernelCheckpoint-children');
      group.setAttribute('role', 'group');
      for (const child of n.children) {
        group.appendChild(this._renderNode(child, args, now, busy));
      }
      li.appendChild(group);
    }
    return li;
  }

  private _checkpoints: IKernelCheckpoint;
  private _commands: CommandRegistry;
  private _session: KernelCheckpointSession | null = null;
  private _clock = 0;
}

export namespace TimelinePanel {
  export interface IOptions {
    id: string;
    /** Whose current session the panel shows. */
    checkpoints: IKernelCheckpoint;
    commands: CommandRegistry;
  }
}

/**
 * The timeline side panel: the current notebook's checkpoints as a graph (one compact row per
 * checkpoint, lanes for branches), a toolbar and a context menu acting on the selected row, a
 * search, and the details of the selected checkpoint. The model holds the selection, the
 * compared checkpoint and the search; this widget draws them.
 *
 * Rows are virtualized: only those in view (and a few around) are in the DOM, so a timeline of
 * hundreds of checkpoints draws and scrolls as fast as one of ten.
 */
import type { CommandRegistry } from '@lumino/commands';
import type { ReadonlyPartialJSONObject } from '@lumino/coreutils';
import type { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';
import {
  deleteIcon,
  duplicateIcon,
  editIcon,
  refreshIcon,
  searchIcon
} from '@jupyterlab/ui-components';
import type { LabIcon } from '@jupyterlab/ui-components';
import type { IGraphRow } from '../graph';
import { relativeTime, uploadText } from '../format';
import { checkpointIcon, compareIcon, restoreIcon, timelineIcon } from '../icons';
import type { CheckpointModel } from '../model';
import type { KernelCheckpointSession } from '../session';
import { busyText, checkpointName, formatDateTime, sizeText } from '../text';
import { CommandIDs } from '../tokens';
import type { IKernelCheckpoint } from '../tokens';
import { DetailsPane, el } from './details';
import { FindFirstBar, findFirstModelOf } from './find-first';

/** Height of one row, in pixels (the CSS sets the same). */
export const ROW_HEIGHT = 40;
/** Width of one lane of the graph, in pixels. */
export const LANE_WIDTH = 12;
/** Rows drawn above and below the visible ones. */
const OVERSCAN = 8;
/** Height assumed for the list before it is laid out (jsdom, a hidden panel). */
const DEFAULT_VIEWPORT = 600;
const SVG_NS = 'http://www.w3.org/2000/svg';

/** DOM id of the row of a checkpoint (for aria-activedescendant). */
export function rowDomId(id: string): string {
  return `jp-KernelCheckpoint-row-${id}`;
}

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    node.setAttribute(k, String(v));
  }
  return node;
}

/** The graph cell of one row: lines passing by, lines from the children, the node's dot. */
export function drawLanes(row: IGraphRow, lanes: number, current: boolean): SVGSVGElement {
  const width = Math.max(lanes, 1) * LANE_WIDTH;
  const h = ROW_HEIGHT;
  const mid = h / 2;
  const x = (lane: number) => lane * LANE_WIDTH + LANE_WIDTH / 2;
  const root = svg('svg', {
    width,
    height: h,
    viewBox: `0 0 ${width} ${h}`,
    class: 'jp-KernelCheckpoint-lanes',
    'aria-hidden': 'true'
  });
  const line = (d: string, lane: number) =>
    root.appendChild(
      svg('path', { d, class: `jp-KernelCheckpoint-edge jp-KernelCheckpoint-lane${lane % 6}` })
    );
  for (const k of row.through) {
    line(`M${x(k)} 0V${h}`, k);
  }
  for (const k of row.joins) {
    line(
      k === row.lane
        ? `M${x(k)} 0V${mid}`
        : `M${x(k)} 0C${x(k)} ${mid} ${x(row.lane)} ${mid * 0.6} ${x(row.lane)} ${mid}`,
      k
    );
  }
  if (row.down) {
    line(`M${x(row.lane)} ${mid}V${h}`, row.lane);
  }
  root.appendChild(
    svg('circle', {
      cx: x(row.lane),
      cy: mid,
      r: current ? 5 : 4,
      class: `jp-KernelCheckpoint-dot jp-KernelCheckpoint-lane${row.lane % 6}${
        current ? ' jp-mod-current' : ''
      }`
    })
  );
  return root;
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

    this._header = el('div', 'jp-KernelCheckpoint-header');
    this._messages = el('div', 'jp-KernelCheckpoint-messages');
    this._toolbar = el('div', 'jp-KernelCheckpoint-actions');
    this._toolbar.setAttribute('role', 'toolbar');
    this._toolbar.setAttribute('aria-label', 'Kernel checkpoint actions');
    this._search = this._makeSearch();
    this._findFirst = new FindFirstBar();
    this._list = el('div', 'jp-KernelCheckpoint-graph');
    this._list.tabIndex = 0;
    this._list.setAttribute('role', 'tree');
    this._list.setAttribute('aria-label', 'Kernel checkpoints');
    this._spacer = el('div', 'jp-KernelCheckpoint-spacer');
    this._list.appendChild(this._spacer);
    this._list.addEventListener('scroll', () => this._scheduleRows());
    this._list.addEventListener('keydown', event => this._onKeyDown(event));
    this._list.addEventListener('mousedown', event => this._onPointer(event));
    this._list.addEventListener('dblclick', event => {
      if (this._rowOf(event)) {
        void this._commands.execute(CommandIDs.restore, { ...this._selectedArgs(), confirm: true });
      }
    });
    this._details = new DetailsPane();
    this._footer = el('div', 'jp-KernelCheckpoint-footer');
    this.node.append(
      this._header,
      this._toolbar,
      this._messages,
      this._search,
      this._findFirst.node,
      this._list,
      this._details.node,
      this._footer
    );

    this._checkpoints.currentChanged.connect(this._onCurrentChanged, this);
    this._onCurrentChanged();
  }

  /** The session shown. */
  get session(): KernelCheckpointSession | null {
    return this._session;
  }

  dispose(): void {
    window.clearInterval(this._clock);
    this._details.dispose();
    this._findFirst.dispose();
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

  protected onResize(msg: Widget.ResizeMessage): void {
    super.onResize(msg);
    this._scheduleRows();
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
      const old = this._session.model;
      old.changed.disconnect(this._onModelChanged, this);
      old.busyChanged.disconnect(this._onModelChanged, this);
      old.viewChanged.disconnect(this._onViewChanged, this);
      this._session.pathChanged.disconnect(this._onModelChanged, this);
    }
    this._session = next;
    this._findFirst.setModel(next ? findFirstModelOf(next) : null);
    if (next) {
      next.model.changed.connect(this._onModelChanged, this);
      next.model.busyChanged.connect(this._onModelChanged, this);
      next.model.viewChanged.connect(this._onViewChanged, this);
      // The header names the notebook: drawn again when it is renamed.
      next.pathChanged.connect(this._onModelChanged, this);
      this._searchInput.value = next.model.query;
    }
    this.update();
  }

  private _onModelChanged(): void {
    this.update();
  }

  private _onViewChanged(): void {
    this._revealSelected = true;
    this.update();
  }

  private _model(): CheckpointModel | null {
    const s = this._session;
    return s && !s.isDisposed ? s.model : null;
  }

  private _selectedArgs(): { path: string; id?: string } {
    const s = this._session;
    const id = s?.model.selectedId;
    return id ? { path: s!.path, id } : { path: s?.path ?? '' };
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

  private _makeSearch(): HTMLElement {
    const box = el('div', 'jp-KernelCheckpoint-search');
    const icon = el('span', 'jp-KernelCheckpoint-searchIcon');
    icon.setAttribute('aria-hidden', 'true');
    searchIcon.element({ container: icon });
    const input = el('input', 'jp-mod-styled jp-KernelCheckpoint-searchInput');
    input.type = 'search';
    input.placeholder = 'Filter…';
    input.setAttribute('aria-label', 'Filter the checkpoints by label, variable name or cell text');
    input.addEventListener('input', () => this._model()?.setQuery(input.value));
    input.addEventListener('keydown', event => {
      if (event.key === 'ArrowDown') {
        event.preventDefault();
        this._list.focus();
      }
    });
    this._searchInput = input;
    this._scopeToggle = el('button', 'jp-Button jp-mod-styled jp-KernelCheckpoint-scopeButton');
    this._scopeToggle.type = 'button';
    this._scopeToggle.addEventListener('click', () => {
      const s = this._session;
      if (s) {
        const all = s.model.scope === 'all';
        void this._commands.execute(CommandIDs.refresh, {
          path: s.path,
          scope: all ? 'session' : 'all'
        });
      }
    });
    this._refreshButton = el('button');
    box.append(icon, input, this._refreshButton, this._scopeToggle);
    return box;
  }

  private _show(node: HTMLElement, shown: boolean): void {
    node.classList.toggle('lm-mod-hidden', !shown);
  }

  private _render(): void {
    const session = this._session;
    const model = this._model();
    this._header.textContent = '';
    this._header.appendChild(el('h2', 'jp-KernelCheckpoint-title', 'Kernel checkpoints'));
    this._messages.textContent = '';
    this._toolbar.textContent = '';
    this._footer.textContent = '';
    const ready = !!model && model.availability.state === 'ready';
    for (const part of [
      this._toolbar,
      this._search,
      this._findFirst.node,
      this._list,
      this._details.node
    ]) {
      this._show(part, ready);
    }
    if (!session || !model) {
      this._message("Open a notebook to see its kernel's checkpoints.");
      return;
    }
    const path = session.path;
    const name = el('div', 'jp-KernelCheckpoint-notebook', path.split('/').pop() ?? path);
    name.title = path;
    this._header.appendChild(name);
    const a = model.availability;
    if (a.state === 'no-kernel') {
      this._message('The notebook has no running kernel.');
      return;
    }
    if (a.state === 'connecting') {
      this._message('Connecting to the kernel checkpoint supervisor…');
      return;
    }
    if (a.state === 'unavailable') {
      this._renderUnavailable(a, { path });
      return;
    }
    this._renderToolbar(model, path);
    this._renderMessages(model);
    const scopeAll = model.scope === 'all';
    this._refreshButton.replaceWith(
      (this._refreshButton = this._button(
        'Refresh',
        'Refresh the checkpoint list',
        CommandIDs.refresh,
        { path },
        'jp-KernelCheckpoint-refresh',
        refreshIcon,
        true
      ))
    );
    this._scopeToggle.textContent = scopeAll ? 'All images' : 'Notebook';
    this._scopeToggle.setAttribute('aria-pressed', scopeAll ? 'true' : 'false');
    this._scopeToggle.title = scopeAll
      ? 'Showing every image in the store: show only the images of this notebook'
      : 'Showing the images of this notebook: show every image in the store';
    const graph = model.graph();
    const empty = model.checkpoints.length === 0;
    this._show(this._search, !empty || scopeAll || model.query !== '');
    this._show(this._list, graph.rows.length > 0);
    this._show(this._details.node, !!model.selected);
    if (empty) {
      this._message(
        model.loaded
          ? scopeAll
            ? 'The store holds no images.'
            : 'No checkpoints yet. Press "Checkpoint" to save the kernel as it is now.'
          : 'Loading…'
      );
    } else if (graph.rows.length === 0) {
      this._message(`No checkpoint matches "${model.query}".`);
    }
    const selectedId = model.selectedId;
    if (selectedId) {
      this._list.setAttribute('aria-activedescendant', rowDomId(selectedId));
    } else {
      this._list.removeAttribute('aria-activedescendant');
    }
    this._spacer.style.height = `${graph.rows.length * ROW_HEIGHT}px`;
    if (this._revealSelected && selectedId) {
      this._reveal(selectedId);
    }
    this._revealSelected = false;
    this._renderRows();
    this._details.show(model, path);
    this._renderFooter(model);
  }

  private _message(text: string): void {
    this._messages.appendChild(el('p', 'jp-KernelCheckpoint-empty', text));
  }

  private _renderUnavailable(
    a: Extract<CheckpointModel['availability'], { state: 'unavailable' }>,
    args: { path: string }
  ): void {
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
      const button = this._button(
        `Switch to ${a.switchTo.displayName}`,
        `Switch this notebook to the kernel ${a.switchTo.displayName}`,
        CommandIDs.switchKernel,
        { ...args, name: a.switchTo.name, displayName: a.switchTo.displayName },
        'jp-mod-accept jp-KernelCheckpoint-switchButton'
      );
      box.appendChild(button);
    } else {
      box.appendChild(
        el(
          'p',
          '',
          'Install a checkpointable kernel with "kernel-checkpoint install", then choose it from the kernel menu.'
        )
      );
    }
    this._messages.appendChild(box);
  }

  private _renderToolbar(model: CheckpointModel, path: string): void {
    const args = { path };
    const selected = model.selected;
    const idArgs = selected ? { path, id: selected.id } : args;
    const name = selected ? checkpointName(selected) : '';
    const comparing = model.compareId !== null;
    this._toolbar.append(
      this._button(
        'Checkpoint',
        'Checkpoint kernel',
        CommandIDs.checkpoint,
        args,
        'jp-mod-accept jp-KernelCheckpoint-checkpointButton',
        checkpointIcon
      ),
      this._button(
        'Restore',
        selected ? `Restore checkpoint ${name}` : 'Restore a checkpoint',
        CommandIDs.restore,
        idArgs,
        'jp-KernelCheckpoint-restore',
        restoreIcon,
        true
      ),
      this._button(
        'New notebook',
        `Open checkpoint ${name} in a new notebook`,
        CommandIDs.openInNewNotebook,
        idArgs,
        'jp-KernelCheckpoint-openInNewNotebook',
        duplicateIcon,
        true
      ),
      this._button(
        'Rename',
        `Rename checkpoint ${name}`,
        CommandIDs.rename,
        idArgs,
        'jp-KernelCheckpoint-rename',
        editIcon,
        true
      ),
      this._button(
        'Delete',
        `Delete checkpoint ${name}`,
        CommandIDs.remove,
        idArgs,
        'jp-KernelCheckpoint-delete',
        deleteIcon,
        true
      ),
      this._button(
        'Compare',
        comparing ? 'Stop comparing' : `Compare checkpoint ${name} with another`,
        CommandIDs.compare,
        idArgs,
        `jp-KernelCheckpoint-compare${comparing ? ' jp-mod-active' : ''}`,
        compareIcon,
        true
      )
    );
    const compare = this._toolbar.querySelector('.jp-KernelCheckpoint-compare');
    compare?.setAttribute('aria-pressed', comparing ? 'true' : 'false');
  }

  private _renderMessages(model: CheckpointModel): void {
    const status = model.status;
    if (status && !status.engine_ok) {
      const warn = el('p', 'jp-KernelCheckpoint-warning');
      warn.setAttribute('role', 'alert');
      warn.textContent = `The ${status.engine.name} engine cannot run here: ${
        status.engine_problem ?? 'unknown reason'
      }`;
      this._messages.appendChild(warn);
    }
    const busy = model.busy;
    if (busy) {
      const line = el('div', 'jp-KernelCheckpoint-progress');
      line.setAttribute('role', 'status');
      line.setAttribute('aria-live', 'polite');
      line.appendChild(el('span', 'jp-KernelCheckpoint-spinner'));
      line.appendChild(el('span', '', busyText(busy.action, busy.stage, busy.message)));
      this._messages.appendChild(line);
    }
    if (model.isFresh && model.checkpoints.length > 0) {
      this._messages.appendChild(
        el(
          'p',
          'jp-KernelCheckpoint-offer',
          model.scope === 'all'
            ? 'This kernel has no checkpoints yet. Every saved image in the store:'
            : 'This kernel has no checkpoints yet. Restore the session from a saved image made for this notebook:'
        )
      );
    }
    if (model.compareId) {
      const c = model.get(model.compareId);
      this._messages.appendChild(
        el(
          'p',
          'jp-KernelCheckpoint-comparing',
          `Comparing with "${c ? checkpointName(c) : model.compareId}": select another checkpoint.`
        )
      );
    }
  }

  /** Engine and store of the supervisor, for the curious and for tests. */
  private _renderFooter(model: CheckpointModel): void {
    const status = model.status;
    if (!status) {
      return;
    }
    this._footer.appendChild(
      el('span', 'jp-KernelCheckpoint-engine', `${status.engine.name} ${status.engine.version}`)
    );
    if (status.store) {
      const store = el('span', 'jp-KernelCheckpoint-store', status.store);
      store.title = `Image store: ${status.store}`;
      this._footer.appendChild(store);
    }
  }

  private _scheduleRows(): void {
    if (this._frame) {
      return;
    }
    this._frame = window.requestAnimationFrame(() => {
      this._frame = 0;
      this._renderRows();
    });
  }

  /** Draw the rows in view (and a few around); the others are not in the DOM. */
  private _renderRows(): void {
    const model = this._model();
    const rows = this._list.querySelectorAll('.jp-KernelCheckpoint-node');
    rows.forEach(r => r.remove());
    if (!model || model.availability.state !== 'ready') {
      return;
    }
    const graph = model.graph();
    const viewport = this._list.clientHeight || DEFAULT_VIEWPORT;
    const first = Math.max(0, Math.floor(this._list.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(
      graph.rows.length,
      Math.ceil((this._list.scrollTop + viewport) / ROW_HEIGHT) + OVERSCAN
    );
    const now = Date.now();
    const selectedId = model.selectedId;
    const fragment = document.createDocumentFragment();
    for (let i = first; i < last; i++) {
      fragment.appendChild(this._renderRow(model, graph.rows[i], i, graph.lanes, now, selectedId));
    }
    this._list.appendChild(fragment);
  }

  private _renderRow(
    model: CheckpointModel,
    row: IGraphRow,
    index: number,
    lanes: number,
    now: number,
    selectedId: string | null
  ): HTMLElement {
    const c = row.checkpoint;
    const name = checkpointName(c);
    const current = c.id === model.currentId;
    const origin = c.id === model.originId;
    const compared = c.id === model.compareId;
    const node = el('div', 'jp-KernelCheckpoint-node');
    node.id = rowDomId(c.id);
    node.dataset.checkpointId = c.id;
    node.style.top = `${index * ROW_HEIGHT}px`;
    node.setAttribute('role', 'treeitem');
    node.setAttribute('aria-level', String(row.depth + 1));
    node.setAttribute('aria-selected', c.id === selectedId ? 'true' : 'false');
    const time = relativeTime(c.created, now);
    const size = sizeText(c);
    const midCell = !!c.state?.cell_running;
    node.setAttribute(
      'aria-label',
      [
        name,
        current ? 'current' : '',
        origin ? 'origin of this notebook' : '',
        compared ? 'compared' : '',
        midCell ? 'taken mid-cell' : '',
        time,
        size,
        row.children > 1 ? `${row.children} branches` : ''
      ]
        .filter(Boolean)
        .join(', ')
    );
    if (current) {
      node.classList.add('jp-mod-current');
      node.setAttribute('aria-current', 'true');
    }
    if (c.id === selectedId) {
      node.classList.add('jp-mod-selected');
    }
    if (compared) {
      node.classList.add('jp-mod-compared');
    }
    if (row.children > 1) {
      node.classList.add('jp-mod-branch');
    }
    node.appendChild(drawLanes(row, lanes, current));
    const body = el('div', 'jp-KernelCheckpoint-body');
    const title = el('div', 'jp-KernelCheckpoint-titleLine');
    const label = el('span', 'jp-KernelCheckpoint-label', name);
    label.title = `${name}\n${c.id}\n${formatDateTime(c.created)}`;
    title.appendChild(label);
    if (current) {
      title.appendChild(el('span', 'jp-KernelCheckpoint-badge', 'current'));
    }
    if (origin) {
      const badge = el('span', 'jp-KernelCheckpoint-badge jp-mod-origin', 'origin');
      badge.title = 'This notebook was opened from this checkpoint of another notebook';
      title.appendChild(badge);
    }
    if (midCell) {
      const badge = el('span', 'jp-KernelCheckpoint-badge jp-mod-midCell', 'mid-cell');
      badge.title = 'Taken while a cell ran: a restore continues that cell';
      title.appendChild(badge);
    }
    if (c.upload) {
      const badge = el('span', 'jp-KernelCheckpoint-badge jp-mod-upload', uploadText(c.upload));
      badge.title = c.upload.error ?? 'Where the image is: this machine only, or the object store';
      title.appendChild(badge);
    }
    body.appendChild(title);
    const meta = el('div', 'jp-KernelCheckpoint-meta');
    const timeEl = el('time', 'jp-KernelCheckpoint-time', time);
    timeEl.dateTime = c.created;
    meta.appendChild(timeEl);
    const count = el(
      'span',
      'jp-KernelCheckpoint-count',
      c.state ? `[${c.state.execution_count}]` : '[?]'
    );
    count.title = 'Execution count';
    meta.appendChild(count);
    const sizeEl = el('span', 'jp-KernelCheckpoint-size', size);
    sizeEl.title = 'Image size';
    meta.appendChild(sizeEl);
    body.appendChild(meta);
    node.appendChild(body);
    return node;
  }

  /** Scroll the list so that a checkpoint's row is in view. */
  private _reveal(id: string): void {
    const index = this._model()?.graph().index.get(id);
    if (index === undefined) {
      return;
    }
    const top = index * ROW_HEIGHT;
    const viewport = this._list.clientHeight || DEFAULT_VIEWPORT;
    if (top < this._list.scrollTop) {
      this._list.scrollTop = top;
    } else if (top + ROW_HEIGHT > this._list.scrollTop + viewport) {
      this._list.scrollTop = top + ROW_HEIGHT - viewport;
    }
  }

  private _rowOf(event: Event): string | null {
    const target = event.target as HTMLElement | null;
    const row = target?.closest?.('.jp-KernelCheckpoint-node') as HTMLElement | null;
    return row?.dataset.checkpointId ?? null;
  }

  /** A click (or the right button, before the context menu opens) selects the row. */
  private _onPointer(event: MouseEvent): void {
    const id = this._rowOf(event);
    const model = this._model();
    if (id && model) {
      model.select(id);
      this._list.focus();
    }
  }

  /** One Tab stop: the arrows move, Enter restores, F2 renames, Delete deletes. */
  private _onKeyDown(event: KeyboardEvent): void {
    const model = this._model();
    if (!model) {
      return;
    }
    const graph = model.graph();
    const id = model.selectedId;
    const index = id ? (graph.index.get(id) ?? -1) : -1;
    const moveTo = (i: number) => {
      const row = graph.rows[Math.max(0, Math.min(graph.rows.length - 1, i))];
      if (row) {
        model.select(row.checkpoint.id);
      }
    };
    const page = Math.max(
      1,
      Math.floor((this._list.clientHeight || DEFAULT_VIEWPORT) / ROW_HEIGHT)
    );
    const args = this._selectedArgs();
    const c = id ? model.get(id) : undefined;
    switch (event.key) {
      case 'ArrowDown':
        moveTo(index + 1);
        break;
      case 'ArrowUp':
        moveTo(index - 1);
        break;
      case 'PageDown':
        moveTo(index + page);
        break;
      case 'PageUp':
        moveTo(index - page);
        break;
      case 'Home':
        moveTo(0);
        break;
      case 'End':
        moveTo(graph.rows.length - 1);
        break;
      case 'ArrowLeft':
        // To the parent.
        if (c?.parent_id && graph.index.has(c.parent_id)) {
          model.select(c.parent_id);
        }
        break;
      case 'ArrowRight': {
        // To the newest child.
        const child = c ? model.childrenOf(c.id).pop() : undefined;
        if (child && graph.index.has(child.id)) {
          model.select(child.id);
        }
        break;
      }
      case 'Enter':
        // A key is easy to hit: always ask, whatever the confirmRestore setting says.
        void this._commands.execute(CommandIDs.restore, { ...args, confirm: true });
        break;
      case 'F2':
        void this._commands.execute(CommandIDs.rename, args);
        break;
      case 'Delete':
        void this._commands.execute(CommandIDs.remove, args);
        break;
      case 'Escape':
        if (model.compareId) {
          model.setCompare(null);
          break;
        }
        return;
      default:
        return;
    }
    event.preventDefault();
    event.stopPropagation();
  }

  private _checkpoints: IKernelCheckpoint;
  private _commands: CommandRegistry;
  private _session: KernelCheckpointSession | null = null;
  private _clock = 0;
  private _frame = 0;
  private _revealSelected = true;
  private _header: HTMLElement;
  private _messages: HTMLElement;
  private _toolbar: HTMLElement;
  private _search: HTMLElement;
  private readonly _findFirst: FindFirstBar;
  private _searchInput!: HTMLInputElement;
  private _scopeToggle!: HTMLButtonElement;
  private _refreshButton!: HTMLButtonElement;
  private _list: HTMLElement;
  private _spacer: HTMLElement;
  private _details: DetailsPane;
  private _footer: HTMLElement;
}

export namespace TimelinePanel {
  export interface IOptions {
    id: string;
    /** Whose current session the panel shows. */
    checkpoints: IKernelCheckpoint;
    commands: CommandRegistry;
  }
}

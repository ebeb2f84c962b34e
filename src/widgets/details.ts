/**
 * The details of the selected checkpoint, under the timeline's graph: what it is (when, engine,
 * sizes, time taken, taken mid-cell or not), the variables it holds, what changed since its
 * parent and from it to the running kernel (or to the compared checkpoint), and the cells run
 * since its parent.
 */
import type { Checkpoint, StateSummary, VariableSummary } from '../../protocol/checkpoint-protocol';
import { diffVariables, isEmptyDiff } from '../diff';
import type { IVariableDiff } from '../diff';
import { formatBytes, formatDuration, relativeTime } from '../format';
import type { CheckpointModel } from '../model';
import { checkpointName, formatDateTime, newBytes, MID_CELL_RESTORE } from '../text';

export function el<K extends keyof HTMLElementTagNameMap>(
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

function shapeText(v: VariableSummary): string {
  if (v.shape && v.shape.length > 0) {
    return `(${v.shape.join(', ')})${v.dtype ? ` ${v.dtype}` : ''}`;
  }
  if (typeof v.length === 'number') {
    return `len ${v.length}`;
  }
  return v.dtype ?? '';
}

function variableSize(v: VariableSummary): string {
  return typeof v.size_bytes === 'number' ? formatBytes(v.size_bytes) : '';
}

/** A section with a heading; `open` sections start expanded. */
function section(title: string, className: string, open = true): HTMLDetailsElement {
  const box = el('details', `jp-KernelCheckpoint-section ${className}`);
  box.open = open;
  box.appendChild(el('summary', 'jp-KernelCheckpoint-sectionTitle', title));
  return box;
}

function variableTable(variables: readonly VariableSummary[]): HTMLTableElement {
  const table = el('table', 'jp-KernelCheckpoint-variables');
  const head = table.createTHead().insertRow();
  for (const h of ['Name', 'Type', 'Size', 'Shape']) {
    const th = el('th', '', h);
    th.scope = 'col';
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const v of variables) {
    const row = body.insertRow();
    row.insertCell().textContent = v.name;
    const type = row.insertCell();
    type.textContent = v.type.split('.').pop() ?? v.type;
    type.title = v.type;
    row.insertCell().textContent = variableSize(v);
    row.insertCell().textContent = shapeText(v);
  }
  return table;
}

/** One line per added, changed and removed variable. */
export function diffList(diff: IVariableDiff): HTMLElement {
  const list = el('ul', 'jp-KernelCheckpoint-diff');
  const add = (kind: 'added' | 'changed' | 'removed', text: string, title?: string) => {
    const li = el('li', `jp-KernelCheckpoint-diff-${kind}`);
    li.appendChild(
      el(
        'span',
        'jp-KernelCheckpoint-diffMark',
        kind === 'added' ? '+' : kind === 'removed' ? '−' : '~'
      )
    );
    li.appendChild(el('span', '', text));
    li.dataset.change = kind;
    if (title) {
      li.title = title;
    }
    list.appendChild(li);
  };
  const describe = (v: VariableSummary) =>
    [v.type.split('.').pop(), variableSize(v), shapeText(v)].filter(Boolean).join(', ');
  for (const v of diff.added) {
    add('added', `${v.name}: ${describe(v)}`);
  }
  for (const c of diff.changed) {
    add(
      'changed',
      `${c.name}: ${describe(c.before)} → ${describe(c.after)}`,
      `changed: ${c.what.join(', ')}`
    );
  }
  for (const v of diff.removed) {
    add('removed', `${v.name}: ${describe(v)}`);
  }
  if (isEmptyDiff(diff)) {
    list.appendChild(
      el(
        'li',
        'jp-KernelCheckpoint-diff-none',
        'No variable added, removed or changed in type, size or shape.'
      )
    );
  }
  if (diff.partial) {
    list.appendChild(
      el(
        'li',
        'jp-KernelCheckpoint-diff-partial',
        'Only part of the variables were listed: the diff may miss some.'
      )
    );
  }
  return list;
}

function diffSection(
  title: string,
  className: string,
  before: StateSummary | null | undefined,
  after: StateSummary | null | undefined,
  note?: string
): HTMLElement {
  const box = section(title, className);
  if (note) {
    box.appendChild(el('p', 'jp-KernelCheckpoint-note', note));
  }
  const diff = diffVariables(before, after);
  box.appendChild(
    diff ? diffList(diff) : el('p', 'jp-KernelCheckpoint-note', 'No state summary to compare.')
  );
  return box;
}

/**
 * "Changed since this checkpoint": from the checkpoint to the running kernel as it is now (the
 * `summary` action), else, when that could not be read, to the kernel's current checkpoint.
 */
function liveSection(c: Checkpoint, model: CheckpointModel): HTMLElement | null {
  const title = 'Changed since this checkpoint';
  const className = 'jp-KernelCheckpoint-kernelDiff';
  const live = model.live;
  if (live?.summary) {
    const count = live.summary.execution_count;
    const running = live.summary.cell_running ? ', a cell running' : '';
    return diffSection(
      title,
      className,
      c.state,
      live.summary,
      `To the running kernel now ([${count}]${running}).`
    );
  }
  const current = model.current;
  if (!current || current.id === c.id) {
    return live?.error
      ? diffSection(title, className, null, null, `The running kernel: ${live.error}`)
      : null;
  }
  const why = live?.error ?? 'its state has not been read yet';
  return diffSection(
    title,
    className,
    c.state,
    current.state,
    `To the running kernel as of its checkpoint "${checkpointName(current)}" (${why}).`
  );
}

export class DetailsPane {
  readonly node = el('section', 'jp-KernelCheckpoint-details');

  constructor() {
    this.node.setAttribute('aria-label', 'Details of the selected kernel checkpoint');
  }

  dispose(): void {
    this.node.remove();
  }

  /** Draw the details of the model's selected checkpoint. */
  show(model: CheckpointModel, notebookPath: string): void {
    const node = this.node;
    // Keep which sections the person opened or closed.
    const opened = new Map(
      Array.from(node.querySelectorAll('details')).map(d => [d.className, d.open])
    );
    node.textContent = '';
    const c = model.selected;
    if (!c) {
      return;
    }
    const name = checkpointName(c);
    const head = el('div', 'jp-KernelCheckpoint-detailsHead');
    head.appendChild(el('h3', 'jp-KernelCheckpoint-detailsTitle', name));
    const id = el('code', 'jp-KernelCheckpoint-detailsId', c.id);
    head.appendChild(id);
    node.appendChild(head);

    const facts = el('dl', 'jp-KernelCheckpoint-facts');
    const fact = (term: string, value: string, title?: string) => {
      facts.appendChild(el('dt', '', term));
      const dd = el('dd', '', value);
      if (title) {
        dd.title = title;
      }
      facts.appendChild(dd);
    };
    fact('Taken', `${relativeTime(c.created)}, ${formatDateTime(c.created)}`);
    fact('Engine', `${c.engine.name} ${c.engine.version}`);
    const fresh = newBytes(c);
    fact('Image', formatBytes(c.image_bytes), 'Full size of the image');
    if (fresh !== null) {
      fact('New bytes', formatBytes(fresh), 'Bytes this image added to the store');
    }
    fact(
      'Took',
      `${formatDuration(c.duration_ms)}${
        typeof c.snapshot_ms === 'number' ? ` (frozen ${formatDuration(c.snapshot_ms)})` : ''
      }`
    );
    fact(
      'Cell',
      c.state?.cell_running
        ? 'taken mid-cell'
        : c.state && 'cell_running' in c.state
          ? 'between cells'
          : 'not recorded'
    );
    if (c.state) {
      fact('Count', `[${c.state.execution_count}]`, 'Execution count');
    }
    if (c.notebook_path && c.notebook_path !== notebookPath) {
      fact('Notebook', c.notebook_path);
    }
    node.appendChild(facts);
    if (c.state?.cell_running) {
      node.appendChild(el('p', 'jp-KernelCheckpoint-note jp-mod-midCell', MID_CELL_RESTORE));
    }

    const sections: (HTMLElement | null)[] = [];
    const compared = model.compareId ? model.get(model.compareId) : undefined;
    if (compared && compared.id !== c.id) {
      const [older, newer] =
        Date.parse(compared.created) <= Date.parse(c.created) ? [compared, c] : [c, compared];
      sections.push(
        diffSection(
          `Compare: "${checkpointName(older)}" → "${checkpointName(newer)}"`,
          'jp-KernelCheckpoint-compareDiff',
          older.state,
          newer.state
        )
      );
    }
    const parent = c.parent_id ? model.get(c.parent_id) : undefined;
    sections.push(
      parent
        ? diffSection('Since its parent', 'jp-KernelCheckpoint-parentDiff', parent.state, c.state)
        : el(
            'p',
            'jp-KernelCheckpoint-note',
            c.parent_id ? 'Its parent is not listed.' : 'A root: no parent.'
          )
    );
    sections.push(liveSection(c, model));
    const variables = c.state?.variables ?? [];
    const vars = section(
      `Variables (${variables.length}${c.state?.truncated ? '+' : ''})`,
      'jp-KernelCheckpoint-variablesSection'
    );
    vars.appendChild(
      c.state
        ? variables.length > 0
          ? variableTable(variables)
          : el('p', 'jp-KernelCheckpoint-note', 'No user variables.')
        : el('p', 'jp-KernelCheckpoint-note', 'The kernel plugin sent no state summary.')
    );
    sections.push(vars);
    const cells = c.state?.cells;
    if (cells) {
      const box = section(
        `Cells run since its parent (${cells.length})`,
        'jp-KernelCheckpoint-cells',
        false
      );
      for (const cell of cells) {
        const pre = el('pre', 'jp-KernelCheckpoint-cell', cell.source);
        pre.dataset.count = cell.execution_count === null ? ' ' : `[${cell.execution_count}]`;
        box.appendChild(pre);
      }
      if (cells.length === 0) {
        box.appendChild(el('p', 'jp-KernelCheckpoint-note', 'None.'));
      }
      sections.push(box);
    }
    for (const s of sections) {
      if (s) {
        if (s instanceof HTMLDetailsElement && opened.has(s.className)) {
          s.open = opened.get(s.className)!;
        }
        node.appendChild(s);
      }
    }
  }
}

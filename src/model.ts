/**
 * The state of one kernel's checkpoints, as the front end knows it: the
 * checkpoints (a tree by parent_id), the one the running kernel descends from,
 * whether the kernel can be checkpointed at all, and what is under way.
 * No DOM, no comm: the session feeds it, the widgets read it.
 */
import { ISignal, Signal } from '@lumino/signaling';
import type {
  Action,
  Checkpoint,
  CheckpointId,
  Event as CheckpointEvent,
  Progress,
  Reply,
  StateSummary,
  SupervisorStatus
} from '../protocol/checkpoint-protocol';
import type { UnavailableReason } from './comm';
import { layoutGraph } from './graph';
import type { IGraph } from './graph';

/** One node of the checkpoint tree. */
export interface ICheckpointNode {
  readonly checkpoint: Checkpoint;
  readonly children: ICheckpointNode[];
  /** Depth in the tree, 0 for a root. */
  readonly depth: number;
  /** The running kernel descends from this checkpoint (current_id). */
  readonly isCurrent: boolean;
  /** This checkpoint is on the path from the current one to its root. */
  readonly onCurrentPath: boolean;
}

/**
 * Whether the kernel of a notebook can be checkpointed.
 */
export type Availability =
  | { state: 'no-kernel' }
  | { state: 'connecting' }
  | { state: 'ready' }
  | {
      state: 'unavailable';
      reason: UnavailableReason;
      message: string;
      /** Name of a checkpointable kernelspec that wraps this kernel, if installed. */
      switchTo?: { name: string; displayName: string };
    };

/** What is under way. */
export interface IBusyState {
  action: Action;
  stage?: Progress['stage'];
  message?: string;
  /** True when this front end asked for it (rather than a magic or the CLI). */
  local: boolean;
}

/**
 * What the front end knows of the running kernel's state now (the `summary` action), for the
 * diff "changed since this checkpoint": its summary (null when the kernel has no plugin), or
 * why it could not be read.
 */
export interface ILiveState {
  readonly summary: StateSummary | null;
  readonly error?: string;
}

/** Which images a list shows. */
export type ListScope = 'session' | 'all';

function byCreated(a: Checkpoint, b: Checkpoint): number {
  const ta = Date.parse(a.created);
  const tb = Date.parse(b.created);
  if (ta !== tb) {
    return (isNaN(ta) ? 0 : ta) - (isNaN(tb) ? 0 : tb);
  }
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/**
 * Build the checkpoint forest from a flat list linked by parent_id.
 *
 * A checkpoint whose parent is not in the list is a root. Siblings are in
 * creation order. Cycles (which a valid store never has) are broken.
 */
export function buildTree(
  checkpoints: Iterable<Checkpoint>,
  currentId: CheckpointId | null
): ICheckpointNode[] {
  const byId = new Map<string, Checkpoint>();
  for (const c of checkpoints) {
    byId.set(c.id, c);
  }
  const onPath = new Set<string>();
  let cursor: string | null = currentId;
  while (cursor && byId.has(cursor) && !onPath.has(cursor)) {
    onPath.add(cursor);
    cursor = byId.get(cursor)!.parent_id;
  }
  const childrenOf = new Map<string | null, Checkpoint[]>();
  for (const c of byId.values()) {
    const parent =
      c.parent_id && byId.has(c.parent_id) && c.parent_id !== c.id ? c.parent_id : null;
    const list = childrenOf.get(parent) ?? [];
    list.push(c);
    childrenOf.set(parent, list);
  }
  const visited = new Set<string>();
  const make = (c: Checkpoint, depth: number): ICheckpointNode => {
    visited.add(c.id);
    const kids = (childrenOf.get(c.id) ?? []).filter(k => !visited.has(k.id)).sort(byCreated);
    return {
      checkpoint: c,
      depth,
      isCurrent: c.id === currentId,
      onCurrentPath: onPath.has(c.id),
      children: kids.map(k => make(k, depth + 1))
    };
  };
  const roots = (childrenOf.get(null) ?? []).sort(byCreated).map(c => make(c, 0));
  // Members of a parent cycle never reach a root: show them as roots too.
  for (const c of Array.from(byId.values()).sort(byCreated)) {
    if (!visited.has(c.id)) {
      roots.push(make(c, 0));
    }
  }
  return roots;
}

/** Depth-first order of a forest. */
export function flattenTree(nodes: ICheckpointNode[]): ICheckpointNode[] {
  const out: ICheckpointNode[] = [];
  const walk = (n: ICheckpointNode) => {
    out.push(n);
    n.children.forEach(walk);
  };
  nodes.forEach(walk);
  return out;
}

/**
 * Whether a checkpoint matches a search: every word of `query` (case-insensitive) is in its
 * label, id, one of its variables' names, or the source of a cell run since its parent.
 */
export function matchesQuery(c: Checkpoint, query: string): boolean {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) {
    return true;
  }
  const haystack = [
    c.label ?? '',
    c.id,
    ...(c.state?.variables ?? []).map(v => v.name),
    ...(c.state?.cells ?? []).map(cell => cell.source)
  ]
    .join('\n')
    .toLowerCase();
  return words.every(w => haystack.includes(w));
}

/**
 * The checkpoints of one kernel, with signals.
 */
export class CheckpointModel {
  /** Emitted when checkpoints, current id, scope or availability change. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted when the selection, the compared checkpoint or the search changes. */
  get viewChanged(): ISignal<this, void> {
    return this._viewChanged;
  }

  /** Emitted when a checkpoint or restore starts, progresses or ends. */
  get busyChanged(): ISignal<this, IBusyState | null> {
    return this._busyChanged;
  }

  get checkpoints(): readonly Checkpoint[] {
    return Array.from(this._checkpoints.values()).sort(byCreated);
  }

  get(id: string): Checkpoint | undefined {
    return this._checkpoints.get(id);
  }

  get currentId(): CheckpointId | null {
    return this._currentId;
  }

  get current(): Checkpoint | null {
    return this._currentId ? (this._checkpoints.get(this._currentId) ?? null) : null;
  }

  /** The kernel has no checkpoint in its history (a fresh kernel). */
  get isFresh(): boolean {
    return this._currentId === null;
  }

  get status(): SupervisorStatus | null {
    return this._status;
  }

  get availability(): Availability {
    return this._availability;
  }

  get busy(): IBusyState | null {
    return this._busy;
  }

  get scope(): ListScope {
    return this._scope;
  }

  /** The last list was loaded at least once. */
  get loaded(): boolean {
    return this._loaded;
  }

  /**
   * The checkpoint the timeline shows in its details: the one chosen, else the current one,
   * else the newest.
   */
  get selectedId(): CheckpointId | null {
    if (this._selectedId && this._checkpoints.has(this._selectedId)) {
      return this._selectedId;
    }
    if (this._currentId && this._checkpoints.has(this._currentId)) {
      return this._currentId;
    }
    const rows = this.graph().rows;
    return rows.length > 0 ? rows[0].checkpoint.id : null;
  }

  get selected(): Checkpoint | null {
    const id = this.selectedId;
    return id ? (this._checkpoints.get(id) ?? null) : null;
  }

  select(id: CheckpointId | null): void {
    if (this._selectedId !== id) {
      this._selectedId = id;
      this._viewChanged.emit();
    }
  }

  /** The checkpoint the selected one is compared with, or null. */
  get compareId(): CheckpointId | null {
    return this._compareId && this._checkpoints.has(this._compareId) ? this._compareId : null;
  }

  setCompare(id: CheckpointId | null): void {
    if (this._compareId !== id) {
      this._compareId = id;
      this._viewChanged.emit();
    }
  }

  /**
   * The checkpoint a notebook made by "Open in a new notebook" came from (its root in the
   * timeline), or null.
   */
  get originId(): CheckpointId | null {
    return this._originId;
  }

  setOrigin(id: CheckpointId | null): void {
    if (this._originId !== id) {
      this._originId = id;
      this._emitChanged();
    }
  }

  /** The running kernel's state as last read, or null before it was. */
  get live(): ILiveState | null {
    return this._live;
  }

  setLive(live: ILiveState | null): void {
    this._live = live;
    this._viewChanged.emit();
  }

  /** The search the timeline filters by ('' for none). */
  get query(): string {
    return this._query;
  }

  setQuery(query: string): void {
    if (this._query !== query) {
      this._query = query;
      this._graph = null;
      this._viewChanged.emit();
    }
  }

  /** Children of a checkpoint in the store's list. */
  childrenOf(id: CheckpointId): Checkpoint[] {
    return this.checkpoints.filter(c => c.parent_id === id && c.id !== id);
  }

  /**
   * The graph of the checkpoints that match the search, each linked to its nearest shown
   * ancestor (computed once per change).
   */
  graph(): IGraph {
    if (!this._graph) {
      const shown = this.checkpoints.filter(c => matchesQuery(c, this._query));
      const ids = new Set(shown.map(c => c.id));
      const parentOf = (c: Checkpoint): CheckpointId | null => {
        const seen = new Set<string>();
        let p = c.parent_id;
        while (p && !ids.has(p) && !seen.has(p)) {
          seen.add(p);
          p = this._checkpoints.get(p)?.parent_id ?? null;
        }
        return p && ids.has(p) ? p : null;
      };
      this._graph = layoutGraph(shown, parentOf);
    }
    return this._graph;
  }

  /** The checkpoint forest. */
  tree(): ICheckpointNode[] {
    return buildTree(this._checkpoints.values(), this._currentId);
  }

  setAvailability(availability: Availability): void {
    this._availability = availability;
    if (availability.state !== 'ready') {
      this._status = null;
    }
    this._emitChanged();
  }

  setStatus(status: SupervisorStatus): void {
    this._status = status;
    this._currentId = status.current_id ?? null;
    this._emitChanged();
    if (status.busy && !this._busy) {
      this.setBusy({ action: status.busy, local: false });
    } else if (!status.busy && this._busy && !this._busy.local) {
      this.setBusy(null);
    }
  }

  setScope(scope: ListScope): void {
    if (this._scope !== scope) {
      this._scope = scope;
      this._emitChanged();
    }
  }

  /** Replace every checkpoint with a list (the answer to a `list` request). */
  setCheckpoints(checkpoints: readonly Checkpoint[], currentId: CheckpointId | null): void {
    this._checkpoints.clear();
    for (const c of checkpoints) {
      this._checkpoints.set(c.id, c);
    }
    this._currentId = currentId;
    this._loaded = true;
    this._emitChanged();
  }

  /** Forget every checkpoint (kernel changed). */
  clear(): void {
    this._checkpoints.clear();
    this._currentId = null;
    this._loaded = false;
    this._status = null;
    this._busy = null;
    this._live = null;
    this._emitChanged();
    this._busyChanged.emit(null);
  }

  /** Take in the reply of a request. */
  applyReply(reply: Reply): void {
    if (reply.checkpoints) {
      this.setCheckpoints(reply.checkpoints, reply.current_id);
      return;
    }
    if (reply.checkpoint) {
      this._checkpoints.set(reply.checkpoint.id, reply.checkpoint);
    }
    if (reply.action === 'delete' && reply.checkpoint) {
      this._checkpoints.delete(reply.checkpoint.id);
    }
    if (reply.status) {
      this._status = reply.status;
    }
    this._currentId = reply.current_id;
    this._emitChanged();
  }

  /** Take in an `event` broadcast. */
  applyEvent(event: CheckpointEvent): void {
    switch (event.event) {
      case 'created':
      case 'labelled':
      case 'upload':
        if (event.checkpoint) {
          this._checkpoints.set(event.checkpoint.id, event.checkpoint);
        }
        break;
      case 'stored':
        // Its new bytes, once chunked in the background: in place, never bringing back a
        // checkpoint deleted meanwhile.
        if (event.checkpoint && this._checkpoints.has(event.checkpoint.id)) {
          this._checkpoints.set(event.checkpoint.id, event.checkpoint);
        }
        break;
      case 'deleted': {
        const id = event.checkpoint_id ?? event.checkpoint?.id;
        if (id) {
          this._checkpoints.delete(id);
        }
        break;
      }
      case 'restored':
        if (event.checkpoint) {
          this._checkpoints.set(event.checkpoint.id, event.checkpoint);
        }
        break;
      case 'busy':
        if (!this._busy || this._busy.action !== event.action) {
          this.setBusy({ action: event.action ?? 'checkpoint', local: false });
        }
        break;
      case 'idle':
        if (this._busy && !this._busy.local) {
          this.setBusy(null);
        }
        break;
    }
    this._currentId = event.current_id ?? null;
    this._emitChanged();
  }

  setBusy(busy: IBusyState | null): void {
    this._busy = busy;
    this._busyChanged.emit(busy);
  }

  /** Take in a `progress` message. */
  applyProgress(progress: Progress, local: boolean): void {
    this.setBusy({
      action: progress.action,
      stage: progress.stage,
      message: progress.message,
      local: this._busy?.local || local
    });
  }

  private _emitChanged(): void {
    this._graph = null;
    this._changed.emit();
  }

  private _checkpoints = new Map<string, Checkpoint>();
  private _currentId: CheckpointId | null = null;
  private _status: SupervisorStatus | null = null;
  private _availability: Availability = { state: 'no-kernel' };
  private _busy: IBusyState | null = null;
  private _scope: ListScope = 'session';
  private _loaded = false;
  private _selectedId: CheckpointId | null = null;
  private _compareId: CheckpointId | null = null;
  private _query = '';
  private _live: ILiveState | null = null;
  private _originId: CheckpointId | null = null;
  private _graph: IGraph | null = null;
  private _changed = new Signal<this, void>(this);
  private _viewChanged = new Signal<this, void>(this);
  private _busyChanged = new Signal<this, IBusyState | null>(this);
}

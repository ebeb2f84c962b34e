/**
 * The layout of the checkpoint graph, drawn like a git graph: one row per checkpoint, newest
 * first; a straight chain stays in one lane (column), each branch gets a lane of its own and
 * joins its parent's lane at the parent's row. No DOM: the timeline draws the rows it returns.
 */
import type { Checkpoint, CheckpointId } from '../protocol/checkpoint-protocol';

/** A line in one row, from the top edge (or the node) to the node (or the bottom edge). */
export interface IGraphRow {
  readonly checkpoint: Checkpoint;
  /** The lane (column, from 0) of this row's node. */
  readonly lane: number;
  /** Depth of the node in the tree (0 for a root), for screen readers. */
  readonly depth: number;
  /** Lanes with a line through the whole row (other branches passing by). */
  readonly through: readonly number[];
  /** Lanes whose line comes down from the row above into this node (its children). */
  readonly joins: readonly number[];
  /** A line goes down from the node to its parent (the node is not a root). */
  readonly down: boolean;
  /** Number of children of the node (in the graph shown). */
  readonly children: number;
}

export interface IGraph {
  readonly rows: readonly IGraphRow[];
  /** Number of lanes, the graph's width. */
  readonly lanes: number;
  /** Row index of each checkpoint id. */
  readonly index: ReadonlyMap<CheckpointId, number>;
}

function newestFirst(a: Checkpoint, b: Checkpoint): number {
  const ta = Date.parse(a.created);
  const tb = Date.parse(b.created);
  if (ta !== tb) {
    return (isNaN(tb) ? 0 : tb) - (isNaN(ta) ? 0 : ta);
  }
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/**
 * Lay out checkpoints linked by parent_id. `parentOf` may replace the parent link (a filtered
 * view links a node to its nearest shown ancestor); a parent not in the list makes a root.
 */
export function layoutGraph(
  checkpoints: readonly Checkpoint[],
  parentOf: (c: Checkpoint) => CheckpointId | null = c => c.parent_id
): IGraph {
  const ids = new Set(checkpoints.map(c => c.id));
  const parent = new Map<CheckpointId, CheckpointId | null>();
  for (const c of checkpoints) {
    const p = parentOf(c);
    parent.set(c.id, p && p !== c.id && ids.has(p) ? p : null);
  }
  // Newest first is a topological order as long as a child is newer than its parent; a clock
  // that went back puts children after their parent: such a parent link is dropped (a root).
  const sorted = [...checkpoints].sort(newestFirst);
  const seen = new Set<CheckpointId>();
  const childCount = new Map<CheckpointId, number>();
  for (const c of sorted) {
    seen.add(c.id);
    const p = parent.get(c.id);
    if (p && seen.has(p)) {
      parent.set(c.id, null);
    } else if (p) {
      childCount.set(p, (childCount.get(p) ?? 0) + 1);
    }
  }
  const depth = new Map<CheckpointId, number>();
  for (let i = sorted.length - 1; i >= 0; i--) {
    const c = sorted[i];
    const p = parent.get(c.id);
    depth.set(c.id, p ? (depth.get(p) ?? 0) + 1 : 0);
  }

  // lanes[k]: the id the line in lane k runs down to, or null when the lane is free.
  const lanes: (CheckpointId | null)[] = [];
  const rows: IGraphRow[] = [];
  const index = new Map<CheckpointId, number>();
  let width = 0;
  for (const c of sorted) {
    const joins: number[] = [];
    lanes.forEach((waiting, k) => {
      if (waiting === c.id) {
        joins.push(k);
      }
    });
    let lane: number;
    if (joins.length > 0) {
      lane = joins[0];
    } else {
      lane = lanes.indexOf(null);
      if (lane < 0) {
        lane = lanes.length;
        lanes.push(null);
      }
    }
    for (const k of joins) {
      lanes[k] = null;
    }
    const through: number[] = [];
    lanes.forEach((waiting, k) => {
      if (waiting !== null && k !== lane) {
        through.push(k);
      }
    });
    const p = parent.get(c.id) ?? null;
    lanes[lane] = p;
    while (lanes.length > 0 && lanes[lanes.length - 1] === null) {
      lanes.pop();
    }
    width = Math.max(width, lane + 1, lanes.length);
    index.set(c.id, rows.length);
    rows.push({
      checkpoint: c,
      lane,
      depth: depth.get(c.id) ?? 0,
      through,
      joins,
      down: p !== null,
      children: childCount.get(c.id) ?? 0
    });
  }
  return { rows, lanes: width, index };
}

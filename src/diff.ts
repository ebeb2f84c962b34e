/**
 * What changed between the variables of two checkpoints, from their state summaries: added,
 * removed, and changed by type, size, shape, dtype or length. Values are never compared (the
 * summary holds none): a variable that kept its type, size and shape shows as unchanged.
 */
import type { StateSummary, VariableSummary } from '../protocol/checkpoint-protocol';

export interface IVariableChange {
  readonly name: string;
  readonly before: VariableSummary;
  readonly after: VariableSummary;
  /** Which of the described properties differ, e.g. ['type', 'size']. */
  readonly what: readonly string[];
}

export interface IVariableDiff {
  readonly added: readonly VariableSummary[];
  readonly removed: readonly VariableSummary[];
  readonly changed: readonly IVariableChange[];
  /** Either summary lists only part of its variables: the diff may miss some. */
  readonly partial: boolean;
}

const same = (a: unknown, b: unknown): boolean =>
  JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

/** Changes from `before` to `after`; null when either has no state summary. */
export function diffVariables(
  before: StateSummary | null | undefined,
  after: StateSummary | null | undefined
): IVariableDiff | null {
  if (!before || !after) {
    return null;
  }
  const old = new Map(before.variables.map(v => [v.name, v]));
  const added: VariableSummary[] = [];
  const changed: IVariableChange[] = [];
  for (const v of after.variables) {
    const o = old.get(v.name);
    if (!o) {
      added.push(v);
      continue;
    }
    old.delete(v.name);
    const what: string[] = [];
    if (o.type !== v.type) {
      what.push('type');
    }
    if (!same(o.size_bytes, v.size_bytes)) {
      what.push('size');
    }
    if (!same(o.shape, v.shape)) {
      what.push('shape');
    }
    if (!same(o.dtype, v.dtype)) {
      what.push('dtype');
    }
    if (!same(o.length, v.length)) {
      what.push('length');
    }
    if (what.length > 0) {
      changed.push({ name: v.name, before: o, after: v, what });
    }
  }
  return {
    added,
    removed: Array.from(old.values()),
    changed,
    partial: !!before.truncated || !!after.truncated
  };
}

/** True when nothing is added, removed or changed. */
export function isEmptyDiff(diff: IVariableDiff): boolean {
  return diff.added.length === 0 && diff.removed.length === 0 && diff.changed.length === 0;
}

/**
 * The words the front end shows for checkpoints: the name of one, the label a new one gets
 * (from the settings' label format), and what a checkpoint or restore under way is doing.
 * Sizes and times: format.ts.
 */
import type { Action, Checkpoint, ProgressStage } from '../protocol/checkpoint-protocol';
import { formatBytes } from './format';

/** The name a checkpoint is shown with. */
export function checkpointName(c: Checkpoint): string {
  return c.label && c.label.trim() ? c.label : c.id;
}

/**
 * The bytes an image added to the store, once the store has cut it into chunks (its manifest's
 * `stored_bytes`, announced by a `stored` event); null until then: the image's full size is all
 * that is known.
 */
export function newBytes(c: Checkpoint): number | null {
  return typeof c.stored_bytes === 'number' ? c.stored_bytes : null;
}

/** The size a row shows: the new bytes when known, else the full image. */
export function sizeText(c: Checkpoint): string {
  const fresh = newBytes(c);
  return fresh === null
    ? formatBytes(c.image_bytes)
    : `+${formatBytes(fresh)} of ${formatBytes(c.image_bytes)}`;
}

/** What restoring a checkpoint taken while a cell ran does. */
export const MID_CELL_RESTORE =
  'Taken while a cell was running (kernel_checkpoint.checkpoint() or %checkpoint in a cell): ' +
  'a kernel restored from it continues that cell from that point, and runs the rest of it ' +
  '(a loop goes on with its next iteration).';

const STAGES: Record<ProgressStage, string> = {
  preparing: 'Preparing',
  quiescing: 'Pausing the kernel',
  snapshotting: 'Taking the snapshot',
  resuming: 'Resuming',
  saving: 'Saving the image',
  verifying: 'Verifying',
  stopping: 'Stopping the kernel',
  restoring: 'Restoring the image',
  reconnecting: 'Reconnecting',
  evaluating: 'Evaluating in a fork',
  tracing: 'Replaying the cells under a tracer'
};

/** A one-line description of what is under way. */
export function busyText(action: Action, stage?: ProgressStage, message?: string): string {
  const what =
    action === 'restore' ? 'Restoring' : action === 'checkpoint' ? 'Checkpointing' : action;
  const detail = message || (stage ? (STAGES[stage] ?? stage) : '');
  return detail ? `${what}: ${detail}…` : `${what}…`;
}

function pad(n: number): string {
  return String(n).padStart(2, '0');
}

/** A local date and 24-hour time, 'YYYY-MM-DD HH:MM:SS' (the label's {date} {time}). */
export function formatDateTime(iso: string): string {
  const d = new Date(iso);
  if (isNaN(d.getTime())) {
    return iso;
  }
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(
    d.getHours()
  )}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Values of the label placeholders. */
export interface ILabelContext {
  /** Notebook path, e.g. 'work/analysis.ipynb'. */
  notebookPath: string;
  /** Execution count of the kernel (highest of the notebook's cells). */
  count: number | null;
  /** Sequence number of this checkpoint for the notebook (1-based). */
  n: number;
  /** Time of the checkpoint. */
  date: Date;
}

/**
 * Expand a label format: {notebook} (file name without .ipynb), {path}, {time}
 * (HH:MM:SS), {date} (YYYY-MM-DD), {count} (execution count), {n} (sequence).
 * Unknown placeholders are left as they are. An empty result means no label.
 */
export function formatLabel(format: string, ctx: ILabelContext): string {
  const base = ctx.notebookPath.split('/').pop() ?? '';
  const notebook = base.replace(/\.ipynb$/i, '');
  const d = ctx.date;
  const values: Record<string, string> = {
    notebook,
    path: ctx.notebookPath,
    time: `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`,
    date: `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`,
    count: ctx.count === null ? '?' : String(ctx.count),
    n: String(ctx.n)
  };
  return format
    .replace(/\{(\w+)\}/g, (whole, key: string) => (key in values ? values[key] : whole))
    .trim();
}

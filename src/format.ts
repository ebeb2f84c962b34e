/**
 * Pure formatting helpers (no DOM).
 */

/** "just now", "5 min ago", "3 h ago", "2 days ago", or a date. */
export function relativeTime(iso: string, now: number = Date.now()): string {
  const t = Date.parse(iso);
  if (isNaN(t)) {
    return iso;
  }
  const s = Math.round((now - t) / 1000);
  if (s < 0) {
    return 'in the future';
  }
  if (s < 45) {
    return 'just now';
  }
  const m = Math.round(s / 60);
  if (m < 60) {
    return `${m} min ago`;
  }
  const h = Math.round(m / 60);
  if (h < 24) {
    return `${h} h ago`;
  }
  const d = Math.round(h / 24);
  if (d < 30) {
    return d === 1 ? 'yesterday' : `${d} days ago`;
  }
  return new Date(t).toISOString().slice(0, 10);
}

/** Bytes in a human unit (1024-based). */
export function formatBytes(bytes: number): string {
  if (!isFinite(bytes) || bytes < 0) {
    return '?';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** Milliseconds as "850 ms", "1.2 s", "2 min 5 s". */
export function formatDuration(ms: number): string {
  if (!isFinite(ms) || ms < 0) {
    return '?';
  }
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  const s = ms / 1000;
  if (s < 60) {
    return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  }
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function pad(n: number): string {
  return String(n).padStart(2, '0');
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

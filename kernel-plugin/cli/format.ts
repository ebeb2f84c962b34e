// Output of the client verbs: tables for people, the protocol's own objects as JSON for scripts.

import type { Checkpoint, Progress, SupervisorStatus } from '../../protocol/checkpoint-protocol';

/** "3 s ago", "5 min ago", "2 h ago", "4 days ago" (or "in ..." for a clock ahead of ours). */
export function relativeTime(iso: string, now: number = Date.now()): string {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) {
    return iso;
  }
  const seconds = Math.round((now - then) / 1000);
  const ahead = seconds < 0;
  const s = Math.abs(seconds);
  let text: string;
  if (s < 5) {
    return 'just now';
  } else if (s < 60) {
    text = `${s} s`;
  } else if (s < 3600) {
    text = `${Math.floor(s / 60)} min`;
  } else if (s < 86400) {
    text = `${Math.floor(s / 3600)} h`;
  } else {
    const days = Math.floor(s / 86400);
    text = `${days} ${days === 1 ? 'day' : 'days'}`;
  }
  return ahead ? `in ${text}` : `${text} ago`;
}

/** Bytes in binary units: "512 B", "1.5 KiB", "230.4 MiB". */
export function humanBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} ${units[0]}` : `${value.toFixed(1)} ${units[unit]}`;
}

export const TABLE_HEADER = [
  '',
  'ID',
  'PARENT',
  'LABEL',
  'WHEN',
  'EXEC',
  'SIZE',
  'ENGINE'
] as const;

/** One row of the checkpoint table; the first cell marks the kernel's current checkpoint. */
export function checkpointRow(
  checkpoint: Checkpoint,
  currentId: string | null,
  now: number = Date.now()
): string[] {
  const count = checkpoint.state?.execution_count;
  return [
    checkpoint.id === currentId ? '*' : '',
    checkpoint.id,
    checkpoint.parent_id ?? '-',
    checkpoint.label ?? '',
    relativeTime(checkpoint.created, now),
    count === undefined ? '-' : String(count),
    humanBytes(checkpoint.image_bytes),
    `${checkpoint.engine.name} ${checkpoint.engine.version}`.trim()
  ];
}

/** Left-aligned columns, two spaces apart, without trailing blanks. */
export function renderTable(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows
    .map(row =>
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i])))
        .join('  ')
        .trimEnd()
    )
    .map(line => `${line}\n`)
    .join('');
}

/** The table of `list` (and of a single checkpoint), oldest first, the current one marked *. */
export function checkpointTable(
  checkpoints: readonly Checkpoint[],
  currentId: string | null,
  now: number = Date.now()
): string {
  if (checkpoints.length === 0) {
    return 'No checkpoints.\n';
  }
  const sorted = [...checkpoints].sort((a, b) => a.created.localeCompare(b.created));
  return renderTable([TABLE_HEADER, ...sorted.map(c => checkpointRow(c, currentId, now))]);
}

/** `status` for people. */
export function statusText(status: SupervisorStatus): string {
  const lines: [string, string][] = [
    [
      'engine',
      `${status.engine.name} ${status.engine.version}${status.engine_ok ? '' : ' (unavailable)'}`
    ],
    ...(status.engine_ok
      ? []
      : [['problem', status.engine_problem ?? 'unknown'] as [string, string]]),
    ['kernel', status.kernel_name],
    ['notebook', status.notebook_path ?? '-'],
    ['current', status.current_id ?? '-'],
    ['busy', status.busy ?? 'no'],
    ['plugin', status.plugin ? 'yes' : 'no'],
    ['protocol', status.protocol_version],
    ...(status.store ? [['store', status.store] as [string, string]] : [])
  ];
  return lines.map(([key, value]) => `${`${key}:`.padEnd(10)}${value}\n`).join('');
}

/** A progress line for stderr. */
export function progressLine(progress: Progress): string {
  return `kernel-checkpoint: ${progress.action}: ${progress.stage}${progress.message ? ` (${progress.message})` : ''}\n`;
}

/** The protocol's own object, as JSON, one document per run. */
export function jsonText(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}

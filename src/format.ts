/**
 * How sizes, durations, times and the checkpoint table are shown to people: one formatting for
 * the front end, the CLI (kernel-plugin/cli/format.ts imports this file) and the %checkpoint
 * magic, whose Python twin is kernel_checkpoint/_format.py. tests/format-cases.json holds the
 * cases that both implementations must give the same text for (a jest and a pytest test read
 * it), so every step here is plain arithmetic that Python does the same way: rounding is
 * floor(x + 0.5), never toFixed or Python's round() (which differ on ties), timestamps are
 * read field by field, and lengths count code points.
 *
 * Pure functions, no DOM: both tsconfigs (src/ and kernel-plugin/) compile this file.
 */
import type { Checkpoint, SupervisorStatus, UploadState } from '../protocol/checkpoint-protocol';

/** Rounds half up, the same way in every language. */
function roundHalfUp(value: number): number {
  return Math.floor(value + 0.5);
}

/** A count of tenths as "12.3". */
function tenths(count: number): string {
  return `${Math.floor(count / 10)}.${count % 10}`;
}

function isAmount(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0;
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/**
 * Bytes in binary units: "512 B", "1.5 KiB", "25.0 MiB", "1020 MiB" (one decimal below 100,
 * none from 100 on); "?" for what is not a size.
 */
export function formatBytes(bytes: number | null | undefined): string {
  if (!isAmount(bytes)) {
    return '?';
  }
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const whole = roundHalfUp(value);
  if (whole >= 1024 && unit < BYTE_UNITS.length - 1) {
    return `1.0 ${BYTE_UNITS[unit + 1]}`; // 1023.7 KiB rounds up to the next unit
  }
  if (unit === 0 || roundHalfUp(value * 10) >= 1000) {
    return `${whole} ${BYTE_UNITS[unit]}`;
  }
  return `${tenths(roundHalfUp(value * 10))} ${BYTE_UNITS[unit]}`;
}

/** Milliseconds as "850 ms", "1.2 s", "42 s", "2 min 5 s", "1 h 3 min"; "?" for what is not one. */
export function formatDuration(ms: number | null | undefined): string {
  if (!isAmount(ms)) {
    return '?';
  }
  if (roundHalfUp(ms) < 1000) {
    return `${roundHalfUp(ms)} ms`;
  }
  if (roundHalfUp(ms / 100) < 100) {
    return `${tenths(roundHalfUp(ms / 100))} s`;
  }
  const seconds = roundHalfUp(ms / 1000);
  if (seconds < 60) {
    return `${seconds} s`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  }
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

const TIMESTAMP =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:Z|([+-])(\d{2}):(\d{2}))$/;

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yearOfEra = y - era * 400;
  const dayOfYear = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
  const dayOfEra = yearOfEra * 365 + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100);
  return era * 146097 + dayOfEra + dayOfYear - 719468;
}

/** "YYYY-MM-DD" of a day number (H. Hinnant's civil_from_days). */
function civilFromDays(days: number): string {
  const z = days + 719468;
  const era = Math.floor(z / 146097);
  const dayOfEra = z - era * 146097;
  const yearOfEra = Math.floor(
    (dayOfEra -
      Math.floor(dayOfEra / 1460) +
      Math.floor(dayOfEra / 36524) -
      Math.floor(dayOfEra / 146096)) /
      365
  );
  const dayOfYear =
    dayOfEra - (365 * yearOfEra + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100));
  const monthIndex = Math.floor((5 * dayOfYear + 2) / 153);
  const day = dayOfYear - Math.floor((153 * monthIndex + 2) / 5) + 1;
  const month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9;
  const year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0);
  const pad = (n: number, width: number) => String(n).padStart(width, '0');
  return `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)}`;
}

/**
 * Milliseconds since the epoch of an RFC 3339 timestamp ("2025-03-01T11:55:00.123Z", or with
 * an offset), as the protocol writes them; null for anything else.
 */
export function parseTimestamp(iso: string): number | null {
  const m = TIMESTAMP.exec(iso);
  if (!m) {
    return null;
  }
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) {
    return null;
  }
  const millis = Number((m[7] ?? '').slice(0, 3).padEnd(3, '0'));
  const offset = m[8] ? (m[8] === '-' ? -1 : 1) * (Number(m[9]) * 60 + Number(m[10])) : 0;
  const minutes = (daysFromCivil(year, month, day) * 24 + hour) * 60 + minute - offset;
  return (minutes * 60 + second) * 1000 + millis;
}

const DAY_SECONDS = 86400;

/**
 * "just now", "30 s ago", "5 min ago", "3 h ago", "1 day ago", "9 days ago" (or "in 10 min" for a
 * clock ahead of ours), and the date (UTC) from 30 days on; a text that is not a timestamp as
 * it is.
 */
export function relativeTime(iso: string, now: number = Date.now()): string {
  const then = parseTimestamp(iso);
  if (then === null) {
    return iso;
  }
  const seconds = roundHalfUp((now - then) / 1000);
  const s = Math.abs(seconds);
  let text: string;
  if (s < 5) {
    return 'just now';
  } else if (s < 60) {
    text = `${s} s`;
  } else if (s < 3600) {
    text = `${Math.floor(s / 60)} min`;
  } else if (s < DAY_SECONDS) {
    text = `${Math.floor(s / 3600)} h`;
  } else if (s < 30 * DAY_SECONDS) {
    const days = Math.floor(s / DAY_SECONDS);
    text = `${days} ${days === 1 ? 'day' : 'days'}`;
  } else {
    return civilFromDays(Math.floor(then / (DAY_SECONDS * 1000)));
  }
  return seconds < 0 ? `in ${text}` : `${text} ago`;
}

/** Length in code points (what Python's len() counts), not UTF-16 units. */
function width(text: string): number {
  return Array.from(text).length;
}

/** At most `max` code points, the last one "…" when text was cut. */
function clip(text: string, max: number): string {
  const points = Array.from(text);
  return points.length <= max ? text : `${points.slice(0, max - 1).join('')}\u2026`;
}

/** Columns of the checkpoint table; the first, unnamed, marks the kernel's current checkpoint. */
export const CHECKPOINT_COLUMNS = [
  '',
  'ID',
  'PARENT',
  'LABEL',
  'WHEN',
  'EXEC',
  'SIZE',
  'ENGINE',
  'VARIABLES'
] as const;

/** Numbers are aligned right. */
const RIGHT_ALIGNED = new Set(['EXEC', 'SIZE', 'NEW']);
/** Bytes a checkpoint added to a deduplicated store, after SIZE, when any checkpoint has them. */
const NEW_COLUMN = 'NEW';
/** Where a checkpoint of a store in object storage is, last, when any checkpoint says. */
const UPLOAD_COLUMN = 'UPLOAD';

/** A checkpoint's upload state for people: "uploading 42 %", "in S3", "not uploaded". */
export function uploadText(upload: UploadState): string {
  switch (upload.state) {
    case 'uploading':
      return `uploading ${upload.percent ?? 0} %`;
    case 'uploaded':
      return 'in S3';
    default:
      return upload.error ? 'not uploaded (retrying)' : 'not uploaded yet';
  }
}
const LABEL_WIDTH = 32;
const VARIABLES_WIDTH = 40;

/** One row of the checkpoint table. */
export function checkpointRow(
  checkpoint: Checkpoint,
  currentId: string | null,
  now: number = Date.now()
): string[] {
  const state = checkpoint.state;
  const engine = checkpoint.engine;
  return [
    checkpoint.id === currentId ? '*' : '',
    checkpoint.id,
    checkpoint.parent_id ?? '-',
    clip(checkpoint.label ?? '', LABEL_WIDTH),
    relativeTime(checkpoint.created, now),
    state ? String(state.execution_count) : '-',
    formatBytes(checkpoint.image_bytes),
    [engine.name, engine.version].filter(Boolean).join(' '),
    clip((state?.variables ?? []).map(v => v.name).join(', '), VARIABLES_WIDTH)
  ];
}

/**
 * Columns two spaces apart, padded to the widest cell (right-aligned where `right` says),
 * lines without trailing blanks and without a final newline.
 */
export function renderTable(
  rows: readonly (readonly string[])[],
  right: (column: number) => boolean = () => false
): string {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, width(cell));
    });
  }
  return rows
    .map(row =>
      row
        .map((cell, i) => {
          const fill = ' '.repeat(widths[i] - width(cell));
          return right(i) ? fill + cell : cell + fill;
        })
        .join('  ')
        .replace(/ +$/, '')
    )
    .join('\n');
}

/** The checkpoint table, oldest first, the current checkpoint marked *. */
export function checkpointTable(
  checkpoints: readonly Checkpoint[],
  currentId: string | null,
  now: number = Date.now()
): string {
  const sorted = [...checkpoints].sort((a, b) =>
    a.created < b.created ? -1 : a.created > b.created ? 1 : 0
  );
  const rows: string[][] = [
    [...CHECKPOINT_COLUMNS],
    ...sorted.map(c => checkpointRow(c, currentId, now))
  ];
  if (sorted.some(c => c.stored_bytes !== undefined)) {
    const at = CHECKPOINT_COLUMNS.indexOf('SIZE') + 1;
    rows[0].splice(at, 0, NEW_COLUMN);
    sorted.forEach((c, i) =>
      rows[i + 1].splice(at, 0, c.stored_bytes === undefined ? '-' : formatBytes(c.stored_bytes))
    );
  }
  if (sorted.some(c => c.upload !== undefined)) {
    rows[0].push(UPLOAD_COLUMN);
    sorted.forEach((c, i) => rows[i + 1].push(c.upload ? uploadText(c.upload) : '-'));
  }
  return renderTable(rows, i => RIGHT_ALIGNED.has(rows[0][i]));
}

/** The status's upload line: what is being uploaded, how many wait, the last failure. */
function uploadSummary(upload: NonNullable<SupervisorStatus['upload']>): string {
  if (upload.waiting === 0) {
    return 'all in S3';
  }
  const parts = [
    ...(upload.uploading ? [`uploading ${upload.uploading} ${upload.percent ?? 0} %`] : []),
    `${upload.waiting} not uploaded yet`
  ];
  return parts.join(', ') + (upload.error ? ` (retrying: ${upload.error})` : '');
}

/** The supervisor's status for people, one "key:     value" line each, without a final newline. */
export function statusText(status: SupervisorStatus): string {
  const engine = `${status.engine.name} ${status.engine.version}`;
  const lines: [string, string][] = [
    ['engine', status.engine_ok ? engine : `${engine} (unavailable)`],
    ...(status.engine_ok
      ? []
      : [['problem', status.engine_problem ?? 'unknown'] as [string, string]]),
    ['kernel', status.kernel_name],
    ['notebook', status.notebook_path ?? '-'],
    ['current', status.current_id ?? '-'],
    ['busy', status.busy ?? 'no'],
    ['plugin', status.plugin ? 'yes' : 'no'],
    ['protocol', status.protocol_version],
    ...(status.store ? [['store', status.store] as [string, string]] : []),
    ...(status.upload ? [['upload', uploadSummary(status.upload)] as [string, string]] : [])
  ];
  return lines.map(([key, value]) => `${`${key}:`.padEnd(10)}${value}`).join('\n');
}

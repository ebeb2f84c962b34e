// Output of the client verbs: tables for people, the protocol's own objects as JSON for scripts.

import type { Checkpoint, Progress, SupervisorStatus } from '../../protocol/checkpoint-protocol';
import { checkpointTable as formatCheckpoints } from '../../src/format';

/**
 * The table of `list` (and of a single checkpoint), as the front end's formatting (src/format.ts)
 * makes it: the %checkpoint magic prints the same one.
 */
export function checkpointTable(
  checkpoints: readonly Checkpoint[],
  currentId: string | null,
  now: number = Date.now()
): string {
  if (checkpoints.length === 0) {
    return 'No checkpoints.\n';
  }
  return `${formatCheckpoints(checkpoints, currentId, now)}\n`;
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

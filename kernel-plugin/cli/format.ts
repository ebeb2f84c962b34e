// Output of the client verbs: tables for people, the protocol's own objects as JSON for scripts.

import type { Checkpoint, Progress, SupervisorStatus } from '../../protocol/checkpoint-protocol';
import { checkpointTable as formatCheckpoints, statusText as formatStatus } from '../../src/format';

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

/** `status` for people: the text the %checkpoint magic prints too. */
export function statusText(status: SupervisorStatus): string {
  return `${formatStatus(status)}\n`;
}

/** A progress line for stderr. */
export function progressLine(progress: Progress): string {
  return `kernel-checkpoint: ${progress.action}: ${progress.stage}${progress.message ? ` (${progress.message})` : ''}\n`;
}

/** The protocol's own object, as JSON, one document per run. */
export function jsonText(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}

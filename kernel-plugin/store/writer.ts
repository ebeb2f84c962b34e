// Who writes a partial image: a process id with the process's start time, so that a supervisor
// opening the store can tell a partial image being written (by a live supervisor of the same
// store) from one left by a supervisor that was killed, even after its pid was reused.

import { promises as fs } from 'node:fs';

/** The start time of process `pid` (clock ticks after boot, from /proc), or null. */
export async function processStart(pid: number): Promise<string | null> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    // The fields after the command name, which may itself hold spaces and parentheses.
    const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    return /^[0-9]+$/.test(start ?? '') ? start : null;
  } catch {
    return null;
  }
}

/**
 * Whether the writer `token` ("<pid>.<start>", start 0 where /proc is missing) still runs.
 * No token (a partial image of an older version, which named no writer) counts as gone.
 */
export async function writerIsAlive(token: string | null): Promise<boolean> {
  const [pid, start] = (token ?? '').split('.');
  if (!pid || !start) {
    return false;
  }
  if (start !== '0') {
    return (await processStart(Number(pid))) === start;
  }
  try {
    process.kill(Number(pid), 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

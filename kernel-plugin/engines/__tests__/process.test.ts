// Watching kernel processes through /proc: a task stuck in its exit is not running on.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import { childrenOf, isRunning, isRunningOn } from '../process';

/** A PID namespace needs root (unshare --pid, nsenter --pid). */
const asRoot = process.getuid?.() === 0 ? it : it.skip;

async function childOf(parent: ChildProcess): Promise<number> {
  for (let tries = 0; tries < 2000; tries++) {
    const [child] = childrenOf(parent.pid ?? 0);
    if (child) {
      return child;
    }
    await sleep(5);
  }
  throw new Error(`no child of ${parent.pid}`);
}

/** The task flags (field 9 of /proc/PID/stat), 0 once it is gone. */
function flagsOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[6]);
  } catch {
    return 0;
  }
}

describe('isRunningOn', () => {
  asRoot('counts a task held in its exit as dead, where isRunning does not', async () => {
    // The init of a PID namespace, killed, waits in its exit (zap_pid_ns_processes) until every
    // task of its namespace is reaped: here one whose parent, `nsenter` (outside), is stopped.
    // So does a kernel whose restore CRIU still traces (criu.ts, waitForRestored).
    const namespace = spawn('unshare', ['--pid', '--fork', 'sleep', '1000'], { stdio: 'ignore' });
    const entered: ChildProcess[] = [];
    try {
      const init = await childOf(namespace);
      entered.push(
        spawn('nsenter', ['-t', String(init), '--pid', 'sleep', '1000'], { stdio: 'ignore' })
      );
      const member = await childOf(entered[0]);
      expect(isRunningOn(init)).toBe(true);
      expect(isRunningOn(member)).toBe(true);

      entered[0].kill('SIGSTOP');
      process.kill(init, 'SIGKILL');
      for (let tries = 0; tries < 1000 && (flagsOf(init) & 0x4) === 0; tries++) {
        await sleep(5);
      }
      expect(isRunning(init)).toBe(true); // it reads as sleeping, not as a zombie
      expect(isRunningOn(init)).toBe(false);
    } finally {
      for (const process of [...entered, namespace]) {
        process.kill('SIGKILL');
      }
    }
  });

  it('counts a running process as running, and a gone one as dead', async () => {
    const child = spawn('sleep', ['1000'], { stdio: 'ignore' });
    const pid = child.pid ?? 0;
    expect(isRunningOn(pid)).toBe(true);
    const exited = new Promise(resolve => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
    expect(isRunningOn(pid)).toBe(false);
  });
});

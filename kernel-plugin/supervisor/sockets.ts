// Knowing when the kernel has let go of the supervisor's connections.
//
// Closing our sockets is not enough before a snapshot: the kernel's libzmq closes its accepted
// ends a moment later, on its own I/O thread. Until then the kernel holds a unix stream socket
// whose peer is outside the image, which CRIU refuses to dump and DMTCP would try to drain.
// The kernel also connects to its own shell socket (ipykernel 7's shell channel thread), and
// that connection is inside the image and harmless: so a connection counts only when its peer
// is not one of the kernel's own sockets. `ss` can tell peers apart but costs ~6 ms a call; so
// the supervisor counts the kernel's accepted connections in /proc/net/unix instead, and asks
// `ss` only when that count does not settle.

import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The inodes of process `pid`'s sockets (none when it is gone). Read at once: ~70 fds, < 1 ms. */
function socketInodes(pid: number): Set<string> {
  const inodes = new Set<string>();
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return inodes;
  }
  for (const fd of fds) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match) {
        inodes.add(match[1]);
      }
    } catch {
      // Closed meanwhile.
    }
  }
  return inodes;
}

/**
 * How many connections process `pid` has accepted on its sockets under `dir`: its own included
 * (/proc/net/unix names no peers, so it cannot tell them apart), null when unreadable. About a
 * millisecond, against ~6 for spawning `ss`.
 */
export function acceptedConnections(dir: string, pid: number): number | null {
  try {
    const ours = socketInodes(pid);
    let count = 0;
    // "Num RefCount Protocol Flags Type St Inode Path": Flags 00010000 is a listening socket,
    // St 03 a connected one; an accepted socket carries its listener's path.
    for (const line of unixTables(pid)) {
      const fields = line.trim().split(/\s+/);
      if (
        fields.length >= 8 &&
        fields[3] !== '00010000' &&
        fields[5] === '03' &&
        fields[7].startsWith(`${dir}/`) &&
        ours.has(fields[6])
      ) {
        count++;
      }
    }
    return count;
  } catch {
    return null;
  }
}

/**
 * The lines of the unix socket tables where process `pid`'s accepted connections are listed: its
 * network namespace's, and, for a kernel in a namespace of its own (a fork, a restore under
 * CRIU), the supervisor's too. Linux makes the socket a listener accepts in the namespace of the
 * socket that connected, so the kernel's ends of the supervisor's connections are in the
 * supervisor's table (measured: none in the kernel's own), and its connections to its own
 * sockets in its own.
 */
function unixTables(pid: number): string[] {
  const own = readFileSync(`/proc/${pid}/net/unix`, 'utf8').split('\n');
  const theirs = readlinkSync(`/proc/${pid}/ns/net`);
  if (theirs === readlinkSync('/proc/self/ns/net')) {
    return own;
  }
  return [...own, ...readFileSync('/proc/self/net/unix', 'utf8').split('\n')];
}

/** Connections to the sockets under `dir` whose other end is outside process `pid`. */
export async function outsideConnections(dir: string, pid: number): Promise<number> {
  // ss -x: "u_str ESTAB 0 0 <local path> <local inode> <peer path> <peer inode>"
  const { stdout } = await run('ss', ['-xaH'], { maxBuffer: 16 << 20 });
  const ours = socketInodes(pid);
  let count = 0;
  for (const line of stdout.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields[0] === 'u_str' && fields[1] === 'ESTAB' && fields[4]?.startsWith(`${dir}/`)) {
      if (ours.has(fields[5]) && !ours.has(fields[7])) {
        count++;
      }
    }
  }
  return count;
}

/** What was connected to the kernel just before the supervisor closed its connections. */
export interface ClosedConnections {
  /** acceptedConnections() before closing. */
  acceptedBefore: number | null;
  /** How many of those were the supervisor's. */
  closed: number;
}

/**
 * Resolves true once no outside connection to `dir`'s sockets remains; false after `timeoutMs`.
 *
 * With `closed`: once the kernel holds that many accepted connections fewer than before, they
 * were the supervisor's, and nothing outside is left. The kernel's own connections to its own
 * sockets do not come and go while it is held for a checkpoint, and an outside process that is
 * not the supervisor has no business on these private sockets (if one were there, the snapshot
 * would fail and say so, and the kernel would go on). This takes 1-3 ms; proof by `ss`, the
 * fallback when the count is unreadable or does not drop within 100 ms, takes ~10 ms a try.
 */
export async function waitForKernelToLetGo(
  dir: string,
  pid: number,
  timeoutMs: number,
  closed?: ClosedConnections
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  if (closed?.acceptedBefore != null && closed.closed > 0) {
    const target = closed.acceptedBefore - closed.closed;
    // Bounded: a connection that never was established is never closed either.
    const countDeadline = Math.min(deadline, Date.now() + 100);
    for (;;) {
      const accepted = acceptedConnections(dir, pid);
      if (accepted !== null && accepted <= target) {
        return true;
      }
      if (accepted === null || Date.now() > countDeadline) {
        break;
      }
      await sleep(1);
    }
  }
  for (let delay = 1; Date.now() < deadline; delay = Math.min(delay * 2, 20)) {
    const remaining = await outsideConnections(dir, pid).catch(() => null);
    if (remaining === null) {
      // No `ss` here: give the kernel's I/O thread a moment instead of proof.
      await sleep(200);
      return true;
    }
    if (remaining === 0) {
      return true;
    }
    await sleep(delay);
  }
  return false;
}

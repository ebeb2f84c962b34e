// Knowing when the kernel has let go of the supervisor's connections.
//
// Closing our sockets is not enough before a snapshot: the kernel's libzmq closes its accepted
// ends a moment later, on its own I/O thread. Until then the kernel holds a unix stream socket
// whose peer is outside the image, which CRIU refuses to dump and DMTCP would try to drain.
// The kernel also connects to its own shell socket (ipykernel 7's shell channel thread), and
// that connection is inside the image and harmless: so a connection counts only when its peer
// is not one of the kernel's own sockets.

import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function socketInodes(pid: number): Promise<Set<string>> {
  const inodes = new Set<string>();
  const fds = await fs.readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
  await Promise.all(
    fds.map(async fd => {
      const target = await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      const match = /^socket:\[(\d+)\]$/.exec(target);
      if (match) {
        inodes.add(match[1]);
      }
    })
  );
  return inodes;
}

/** Connections to the sockets under `dir` whose other end is outside process `pid`. */
export async function outsideConnections(dir: string, pid: number): Promise<number> {
  // ss -x: "u_str ESTAB 0 0 <local path> <local inode> <peer path> <peer inode>"
  const { stdout } = await run('ss', ['-xaH'], { maxBuffer: 16 << 20 });
  const ours = await socketInodes(pid);
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

/** Resolves true once no outside connection to `dir`'s sockets remains; false after `timeoutMs`. */
export async function waitForKernelToLetGo(
  dir: string,
  pid: number,
  timeoutMs: number
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
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

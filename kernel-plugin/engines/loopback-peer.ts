// Which process is at the other end of a TCP connection on 127.0.0.1: any local process can
// connect to a loopback port, so a server that must talk to one known child (the page server and
// `criu lazy-pages`) proves it before it sends a byte. Linux only: the connecting socket's inode
// is found in /proc/net/tcp (or tcp6) by its two ports, then among the child's open files
// (/proc/PID/fd links read `socket:[INODE]`).

import { promises as fs } from 'node:fs';
import type net from 'node:net';

/** `0100007F:1F90` → port 0x1F90 when the address is 127.0.0.1 (as IPv4, or IPv4 in IPv6). */
function loopbackPort(field: string): number | null {
  const [address, port] = field.split(':');
  if (!port || !(address === '0100007F' || address.endsWith('FFFF00000100007F'))) {
    return null;
  }
  return parseInt(port, 16);
}

/** The inode of the socket whose local port is `from` and remote port is `to`, both loopback. */
async function socketInode(from: number, to: number): Promise<string | null> {
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await fs.readFile(table, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      if (
        fields.length > 9 &&
        loopbackPort(fields[1]) === from &&
        loopbackPort(fields[2]) === to &&
        fields[9] !== '0'
      ) {
        return fields[9];
      }
    }
  }
  return null;
}

/**
 * Whether the peer of `socket` (accepted on 127.0.0.1) is a socket open in process `pid`. False
 * when it cannot be shown (the peer already gone, /proc unreadable): refused on doubt.
 */
export async function peerIsProcess(socket: net.Socket, pid: number): Promise<boolean> {
  const { localPort, remotePort } = socket;
  if (localPort === undefined || remotePort === undefined) {
    return false;
  }
  const inode = await socketInode(remotePort, localPort);
  if (!inode) {
    return false;
  }
  const fdDir = `/proc/${pid}/fd`;
  const fds = await fs.readdir(fdDir).catch(() => [] as string[]);
  const wanted = `socket:[${inode}]`;
  for (const fd of fds) {
    if ((await fs.readlink(`${fdDir}/${fd}`).catch(() => '')) === wanted) {
      return true;
    }
  }
  return false;
}

// A lineage is one kernel process and every process restored from its images: they share the
// ipc folder (its path is inside the images) and the private connection. This module is the
// one place that lays a lineage out, for a new kernel and for one restored from an image.

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import { ensureRuntimeFolder, runtimeFolder } from '../store/runtime-folder';
import type { PrivateRecord } from '../store/store';
import type { ConnectionInfo } from './wire';

export interface Lineage {
  id: string;
  ipcDir: string;
  connection: ConnectionInfo;
  connectionFile: string;
  agentEndpoint: string;
}

/** The folder of every lineage's ipc folder: short (unix socket paths are <= 107 bytes), private. */
export function runtimeBase(env: NodeJS.ProcessEnv = process.env): string {
  return runtimeFolder(env);
}

/** Where a lineage's files and endpoints are, given its folder. */
function layout(id: string, ipcDir: string, connection: ConnectionInfo): Lineage {
  return {
    id,
    ipcDir,
    connection,
    connectionFile: path.join(ipcDir, 'connection.json'),
    agentEndpoint: `ipc://${path.join(ipcDir, 'agent')}`
  };
}

/**
 * A new kernel process's identity: its private folder and connection. It signs with Jupyter's key
 * (`signing`), so that the relay can pass its messages on as they are, without re-signing each;
 * only a kernel restored from an image of another session has another key (see Relay).
 */
export function newLineage(
  env: NodeJS.ProcessEnv,
  signing: { key: string; signature_scheme: string }
): Lineage {
  const id = randomBytes(6).toString('hex');
  const ipcDir = path.join(runtimeBase(env), id);
  return layout(id, ipcDir, {
    transport: 'ipc',
    ip: path.join(ipcDir, 'kernel'),
    shell_port: 1,
    iopub_port: 2,
    stdin_port: 3,
    control_port: 4,
    hb_port: 5,
    key: signing.key,
    signature_scheme: signing.signature_scheme
  });
}

/** The lineage of the kernel process an image holds, as its private record says. */
export function recordedLineage(
  record: Pick<PrivateRecord, 'lineage' | 'ipcDir' | 'kernelConnection' | 'agentEndpoint'>
): Lineage {
  const lineage = layout(
    record.lineage,
    record.ipcDir,
    record.kernelConnection as unknown as ConnectionInfo
  );
  return record.agentEndpoint ? { ...lineage, agentEndpoint: record.agentEndpoint } : lineage;
}

/**
 * Where the supervisor of a fork sees the kernel an image holds: the image's lineage, moved into
 * a new private folder of its own. The kernel, in namespaces of its own, sees that folder at the
 * image's ipc folder (engines/criu.ts), so it keeps the paths and the key of its image. A fork
 * keeps its folder (`folder`) when it restores another image.
 */
export function forkLineage(
  image: Lineage,
  env: NodeJS.ProcessEnv,
  folder?: Pick<Lineage, 'id' | 'ipcDir'>
): Lineage {
  const id = folder?.id ?? randomBytes(6).toString('hex');
  const ipcDir = folder?.ipcDir ?? path.join(runtimeBase(env), id);
  const moved = (where: string) =>
    where.startsWith(`${image.ipcDir}/`) ? ipcDir + where.slice(image.ipcDir.length) : where;
  return {
    ...layout(id, ipcDir, { ...image.connection, ip: moved(image.connection.ip) }),
    agentEndpoint: `ipc://${moved(image.agentEndpoint.replace(/^ipc:\/\//, ''))}`
  };
}

/** Creates the lineage's private folder and connection file. Existing socket files are stale. */
export async function prepareLineageDir(lineage: Lineage): Promise<void> {
  // A restore waits for this: one step at a time, it took 5 ms of a 0.1 s restore.
  await ensureRuntimeFolder(path.dirname(lineage.ipcDir));
  await fs.mkdir(lineage.ipcDir, { recursive: true, mode: 0o700 });
  const stale = (await fs.readdir(lineage.ipcDir)).filter(name => name !== 'connection.json');
  await Promise.all([
    ...stale.map(name => fs.rm(path.join(lineage.ipcDir, name), { force: true, recursive: true })),
    fs.writeFile(lineage.connectionFile, JSON.stringify(lineage.connection, null, 1), {
      mode: 0o600
    })
  ]);
}

export async function removeLineageDir(lineage: Lineage): Promise<void> {
  await fs.rm(lineage.ipcDir, { recursive: true, force: true }).catch(() => undefined);
}

/**
 * Makes the folder an isolated kernel's own folder is mounted at (its image's ipc folder), on the
 * host, when it is missing. True when this call made it: the supervisor then removes it once its
 * kernel is gone; a folder that was there belongs to another kernel of the lineage.
 */
export async function makeMountpoint(imageIpcDir: string): Promise<boolean> {
  const made = await fs.mkdir(imageIpcDir, { recursive: true, mode: 0o700 });
  return made !== undefined;
}

/**
 * Whether a live kernel of `lineage` listens in its ipc folder: its heartbeat socket accepts a
 * connection. A kernel restored into that folder would take its paths from under it.
 */
export function lineageIsLive(lineage: Lineage): Promise<boolean> {
  const { ip, hb_port, transport } = lineage.connection;
  if (transport !== 'ipc') {
    return Promise.resolve(false);
  }
  return new Promise(resolve => {
    const socket = net.connect(`${ip}-${hb_port}`);
    const done = (live: boolean) => {
      socket.destroy();
      resolve(live);
    };
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
    socket.setTimeout(1000, () => done(false));
  });
}

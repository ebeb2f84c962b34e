// Knowing when the kernel has let go: against real unix sockets of this process, which plays
// the kernel (it accepts) and the supervisor (it connects).

import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { acceptedConnections, waitForKernelToLetGo } from '../sockets';

describe('letting go of connections', () => {
  let dir: string;
  let server: net.Server;
  const accepted: net.Socket[] = [];
  const clients: net.Socket[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'kc-sockets-'));
    server = net.createServer(socket => accepted.push(socket));
    await new Promise<void>(resolve => server.listen(path.join(dir, 'shell'), resolve));
  });

  afterEach(async () => {
    for (const socket of [...clients, ...accepted]) {
      socket.destroy();
    }
    clients.length = 0;
    accepted.length = 0;
    await new Promise(resolve => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  async function connect(count: number): Promise<void> {
    const before = accepted.length;
    for (let i = 0; i < count; i++) {
      clients.push(net.createConnection(path.join(dir, 'shell')));
    }
    while (accepted.length < before + count) {
      await new Promise(resolve => setTimeout(resolve, 5));
    }
  }

  it('counts the connections accepted on sockets under the folder, and only those', async () => {
    expect(acceptedConnections(dir, process.pid)).toBe(0);
    await connect(3);
    expect(acceptedConnections(dir, process.pid)).toBe(3);
    // Another folder's sockets are not these.
    expect(acceptedConnections(`${dir}-other`, process.pid)).toBe(0);
    accepted[0].destroy();
    expect(acceptedConnections(dir, process.pid)).toBe(2);
  });

  it('resolves once the accepting side has closed as many connections as were closed', async () => {
    await connect(3);
    const closed = { acceptedBefore: acceptedConnections(dir, process.pid), closed: 2 };
    // The "kernel" lets go a moment after the "supervisor" closed its ends.
    const letGo = setTimeout(() => {
      accepted[0].destroy();
      accepted[1].destroy();
    }, 30);
    const started = Date.now();
    let settled = false;
    const waiting = waitForKernelToLetGo(dir, process.pid, 5000, closed).then(result => {
      settled = true;
      return result;
    });
    await new Promise(resolve => setTimeout(resolve, 15));
    expect(settled).toBe(false);
    expect(await waiting).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(30);
    clearTimeout(letGo);
    expect(acceptedConnections(dir, process.pid)).toBe(1);
  });

  it('falls back to ss when the count does not drop (a connection that never was)', async () => {
    await connect(2);
    // Three said closed, two ever accepted: the count cannot get there, so after 100 ms `ss`
    // decides (here both ends are in this process, so nothing is outside).
    const closed = { acceptedBefore: acceptedConnections(dir, process.pid), closed: 3 };
    const started = Date.now();
    expect(await waitForKernelToLetGo(dir, process.pid, 5000, closed)).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(100);
    expect(acceptedConnections(dir, process.pid)).toBe(2);
  });
});

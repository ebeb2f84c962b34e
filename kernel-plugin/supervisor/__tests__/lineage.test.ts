import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { forkLineage, lineageIsLive, makeMountpoint, newLineage } from '../lineage';

describe('a fork lineage', () => {
  const env = { KERNEL_CHECKPOINT_RUNTIME_DIR: '/tmp/kc' };
  const image = newLineage(env, { key: 'image-key', signature_scheme: 'hmac-sha256' });

  it("reaches the image's endpoints through a folder of its own, with the image's key", () => {
    const fork = forkLineage(image, env);
    expect(fork.ipcDir).not.toBe(image.ipcDir);
    expect(fork.ipcDir.startsWith('/tmp/kc/')).toBe(true);
    expect(fork.connection.ip).toBe(`${fork.ipcDir}/kernel`);
    expect(fork.agentEndpoint).toBe(`ipc://${fork.ipcDir}/agent`);
    expect(fork.connection.key).toBe('image-key');
    expect(fork.connection.shell_port).toBe(image.connection.shell_port);
  });

  it('keeps its folder when it reaches another image', () => {
    const fork = forkLineage(image, env);
    const other = newLineage(env, { key: 'other', signature_scheme: 'hmac-sha256' });
    const again = forkLineage(other, env, fork);
    expect(again.ipcDir).toBe(fork.ipcDir);
    expect(again.connection.ip).toBe(`${fork.ipcDir}/kernel`);
    expect(again.connection.key).toBe('other');
  });
});

describe("an image's ipc folder, seen by a restore beside it", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'kc-lineage-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('is live while a kernel listens at its heartbeat, and not once it has gone', async () => {
    const lineage = newLineage(
      { KERNEL_CHECKPOINT_RUNTIME_DIR: dir },
      { key: 'k', signature_scheme: 'hmac-sha256' }
    );
    expect(await lineageIsLive(lineage)).toBe(false);
    await makeMountpoint(lineage.ipcDir);
    const heartbeat = net.createServer(socket => socket.destroy());
    await new Promise<void>(resolve =>
      heartbeat.listen(`${lineage.connection.ip}-${lineage.connection.hb_port}`, resolve)
    );
    expect(await lineageIsLive(lineage)).toBe(true);
    await new Promise(resolve => heartbeat.close(resolve));
    expect(await lineageIsLive(lineage)).toBe(false);
  });

  it('is made as a mountpoint only when missing, and says whether it made it', async () => {
    const where = path.join(dir, 'abc123');
    expect(await makeMountpoint(where)).toBe(true);
    expect(await makeMountpoint(where)).toBe(false);
  });
});

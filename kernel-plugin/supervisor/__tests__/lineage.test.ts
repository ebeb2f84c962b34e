import { forkLineage, newLineage } from '../lineage';

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

import { CONNECTION_PLACEHOLDER, isIPythonKernel, kernelCommand } from '../kernel-setup';
import { newLineage } from '../lineage';

describe('kernel command', () => {
  const env = { PATH: '/usr/bin', JPY_PARENT_PID: '123', KERNEL_CHECKPOINT_RUNTIME_DIR: '/tmp/kc' };

  const signing = { key: 'jupyter-key', signature_scheme: 'hmac-sha256' };

  it("gives a new kernel process Jupyter's key", () => {
    expect(newLineage(env, signing).connection).toMatchObject(signing);
  });

  it("starts the kernel without an S3 store's credentials, and with them for a local store", () => {
    const lineage = newLineage(env, signing);
    const argv = ['/venv/bin/python', '-m', 'ipykernel_launcher', '-f', CONNECTION_PLACEHOLDER];
    const withCredentials = {
      ...env,
      AWS_ACCESS_KEY_ID: 'id',
      AWS_SECRET_ACCESS_KEY: 'secret',
      AWS_SESSION_TOKEN: 'token',
      AWS_ENDPOINT_URL: 'http://127.0.0.1:9000',
      AWS_REGION: 'us-east-1'
    };
    const remote = kernelCommand(argv, lineage, withCredentials, undefined, [], true).env;
    expect(remote.AWS_ACCESS_KEY_ID).toBeUndefined();
    expect(remote.AWS_SECRET_ACCESS_KEY).toBeUndefined();
    expect(remote.AWS_SESSION_TOKEN).toBeUndefined();
    expect(remote.AWS_ENDPOINT_URL).toBe('http://127.0.0.1:9000');
    expect(remote.AWS_REGION).toBe('us-east-1');
    // A local store: the user's own variables are the kernel's, as before.
    const local = kernelCommand(argv, lineage, withCredentials).env;
    expect(local.AWS_SECRET_ACCESS_KEY).toBe('secret');
  });

  it('points the wrapped kernel at its private connection and strips JPY_PARENT_PID', () => {
    const lineage = newLineage(env, signing);
    const argv = ['/venv/bin/python', '-m', 'ipykernel_launcher', '-f', CONNECTION_PLACEHOLDER];
    const command = kernelCommand(argv, lineage, env, '/server/kernel-1.json', ['--flag']);
    expect(command.argv.slice(0, 5)).toEqual([
      '/venv/bin/python',
      '-m',
      'ipykernel_launcher',
      '-f',
      lineage.connectionFile
    ]);
    expect(command.argv).toContain('--HistoryManager.hist_file=:memory:');
    expect(command.argv).toContain('--flag');
    expect(command.env.JPY_PARENT_PID).toBeUndefined();
    expect(lineage.connection.transport).toBe('ipc');
    expect(lineage.ipcDir.startsWith('/tmp/kc/')).toBe(true);
  });

  it('replaces the server connection file passed by hand', () => {
    const lineage = newLineage(env, signing);
    const command = kernelCommand(
      ['ipykernel_launcher', '-f', '/server/k.json'],
      lineage,
      env,
      '/server/k.json'
    );
    expect(command.argv[2]).toBe(lineage.connectionFile);
  });

  it('leaves kernels that are not IPython alone', () => {
    const lineage = newLineage(env, signing);
    const command = kernelCommand(
      ['R', '--slave', '-e', 'IRkernel::main()', '{connection_file}'],
      lineage,
      env
    );
    expect(isIPythonKernel(command.argv)).toBe(false);
    expect(command.withPlugin).toBe(false);
    expect(command.argv).not.toContain('--HistoryManager.hist_file=:memory:');
    expect(command.argv[4]).toBe(lineage.connectionFile);
  });

  it('gives every lineage its own folder', () => {
    const a = newLineage(env, signing);
    const b = newLineage(env, signing);
    expect(a.ipcDir).not.toBe(b.ipcDir);
    expect(a.id).not.toBe(b.id);
  });
});

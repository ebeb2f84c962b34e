// How the supervisor prepares a kernel process: its private ipc folder and connection, its
// argv (the in-kernel plugin and a private history for Python kernels) and its environment.

import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { ConnectionInfo } from './wire';

/**
 * A lineage is one kernel process and every process restored from its images: they share the
 * ipc folder (its path is inside the images) and the private connection.
 */
export interface Lineage {
  id: string;
  ipcDir: string;
  connection: ConnectionInfo;
  connectionFile: string;
  agentEndpoint: string;
}

/** The folder of every lineage's ipc folder: short (unix socket paths are <= 107 bytes), private. */
export function runtimeBase(env: NodeJS.ProcessEnv = process.env): string {
  return (
    env.KERNEL_CHECKPOINT_RUNTIME_DIR ||
    path.join(os.tmpdir(), `kernel-checkpoint-${process.getuid?.() ?? 0}`)
  );
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
  return {
    id,
    ipcDir,
    connectionFile: path.join(ipcDir, 'connection.json'),
    agentEndpoint: `ipc://${path.join(ipcDir, 'agent')}`,
    connection: {
      transport: 'ipc',
      ip: path.join(ipcDir, 'kernel'),
      shell_port: 1,
      iopub_port: 2,
      stdin_port: 3,
      control_port: 4,
      hb_port: 5,
      key: signing.key,
      signature_scheme: signing.signature_scheme
    }
  };
}

/** Creates the lineage's private folder and connection file. Existing socket files are stale. */
export async function prepareLineageDir(lineage: Lineage): Promise<void> {
  // A restore waits for this: one step at a time, it took 5 ms of a 0.1 s restore.
  await fs.mkdir(lineage.ipcDir, { recursive: true, mode: 0o700 });
  const stale = (await fs.readdir(lineage.ipcDir)).filter(name => name !== 'connection.json');
  await Promise.all([
    fs.chmod(path.dirname(lineage.ipcDir), 0o700),
    ...stale.map(name => fs.rm(path.join(lineage.ipcDir, name), { force: true, recursive: true })),
    fs.writeFile(lineage.connectionFile, JSON.stringify(lineage.connection, null, 1), {
      mode: 0o600
    })
  ]);
}

export async function removeLineageDir(lineage: Lineage): Promise<void> {
  await fs.rm(lineage.ipcDir, { recursive: true, force: true }).catch(() => undefined);
}

/** Whether argv starts an IPython kernel (the in-kernel plugin and history flags apply). */
export function isIPythonKernel(argv: string[]): boolean {
  return argv.some(
    arg => /(^|[/\\])ipykernel(_launcher)?(\.py)?$/.test(arg) || arg === 'ipykernel_launcher'
  );
}

/** Where the `kernel_checkpoint` Python package lives, so the kernel can import the plugin. */
export function pluginPath(env: NodeJS.ProcessEnv = process.env): string | null {
  const candidates = [
    env.KERNEL_CHECKPOINT_PLUGIN_PATH,
    // The bundle in an installed package: <site-packages>/kernel_checkpoint/_node/
    path.resolve(__dirname, '..', '..'),
    // The compiled sources in a checkout: kernel-plugin/lib/supervisor/
    path.resolve(__dirname, '..', '..', 'python')
  ];
  return (
    candidates.find(dir => dir && existsSync(path.join(dir, 'kernel_checkpoint', '__init__.py'))) ??
    null
  );
}

export interface KernelCommand {
  argv: string[];
  env: NodeJS.ProcessEnv;
  withPlugin: boolean;
}

/** The wrapped kernel's argv and environment, pointed at the lineage's private connection. */
export const CONNECTION_PLACEHOLDER = '{kernel_checkpoint_connection_file}';

export function kernelCommand(
  wrappedArgv: string[],
  lineage: Lineage,
  env: NodeJS.ProcessEnv,
  serverConnectionFile?: string,
  engineFlags: readonly string[] = []
): KernelCommand {
  // Installed kernelspecs carry a placeholder Jupyter leaves alone; by hand, `{connection_file}`
  // or the server's own file may stand where the kernel's private one must go.
  const argv = wrappedArgv.map(arg =>
    arg === serverConnectionFile
      ? lineage.connectionFile
      : arg
          .replace(CONNECTION_PLACEHOLDER, lineage.connectionFile)
          .replace('{connection_file}', lineage.connectionFile)
  );
  const kernelEnv: NodeJS.ProcessEnv = { ...env };
  // ipykernel exits when JPY_PARENT_PID is not its parent, which it never is after a restore.
  delete kernelEnv.JPY_PARENT_PID;
  const plugin = pluginPath(env);
  const withPlugin = isIPythonKernel(argv) && plugin !== null;
  if (isIPythonKernel(argv)) {
    // A shared history.sqlite breaks restores (its size changes) and was seen corrupted.
    // parent_handle=1: no parent to poll (it is gone after a restore) and no Ctrl-C note for a
    // terminal in the server's log (docs/engines.md).
    argv.push(
      '--HistoryManager.hist_file=:memory:',
      '--IPKernelApp.parent_handle=1',
      ...engineFlags
    );
  }
  if (withPlugin) {
    argv.push('--InteractiveShellApp.extra_extensions=kernel_checkpoint');
    kernelEnv.PYTHONPATH = [plugin, env.PYTHONPATH].filter(Boolean).join(path.delimiter);
    kernelEnv.KERNEL_CHECKPOINT_AGENT = lineage.agentEndpoint;
  }
  return { argv, env: kernelEnv, withPlugin };
}

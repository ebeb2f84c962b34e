// How the supervisor prepares a kernel process: its private ipc folder and connection, its
// argv (the in-kernel plugin and a private history for Python kernels) and its environment.

import { existsSync } from 'node:fs';
import path from 'node:path';

import type { Lineage } from './lineage';

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

/**
 * The standard variables that hold an S3-compatible store's credentials. They are the
 * supervisor's, which uploads the images: a kernel's environment is in its memory, and so in
 * every image of it, uploaded to the bucket those credentials open (seen: the secret key in
 * plain text in a pack once the interpreter's pages were stored raw; compressed, it was there
 * all the same). A notebook that needs credentials of its own gets them from a profile
 * (`AWS_PROFILE`, ~/.aws/credentials), which its own code reads.
 */
export const STORE_CREDENTIAL_VARIABLES = [
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_SECURITY_TOKEN'
] as const;

export function kernelCommand(
  wrappedArgv: string[],
  lineage: Lineage,
  env: NodeJS.ProcessEnv,
  serverConnectionFile?: string,
  engineFlags: readonly string[] = [],
  remoteStore = false
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
  if (remoteStore) {
    for (const name of STORE_CREDENTIAL_VARIABLES) {
      delete kernelEnv[name];
    }
  }
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

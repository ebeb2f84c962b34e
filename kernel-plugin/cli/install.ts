// `kernel-checkpoint install`: writes a kernelspec that runs an existing kernel under the
// supervisor. Jupyter's own kernelspec machinery (jupyter_client, in Python) finds the wrapped
// spec and installs ours, so every location rule is Jupyter's.

import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Command } from 'commander';

import { CONNECTION_PLACEHOLDER } from '../supervisor/kernel-setup';

const run = promisify(execFile);

interface InstallOptions {
  user?: boolean;
  sysPrefix?: boolean;
  prefix?: string;
  wrap: string;
  name?: string;
  engine: string;
  store?: string;
}

/** The Python that runs Jupyter here (the launcher tells us which). */
export function pythonExecutable(): string {
  return process.env.KERNEL_CHECKPOINT_PYTHON || 'python3';
}

/** This command's own executable, as a kernelspec must name it. */
function selfCommand(): string {
  const besidePython = path.join(path.dirname(pythonExecutable()), 'kernel-checkpoint');
  return process.env.KERNEL_CHECKPOINT_COMMAND || besidePython;
}

const FIND_SPEC = `
import json, sys
from jupyter_client.kernelspec import KernelSpecManager
spec = KernelSpecManager().get_kernel_spec(sys.argv[1])
print(json.dumps({"resource_dir": spec.resource_dir, "spec": spec.to_dict()}))
`;

const INSTALL_SPEC = `
import sys
from jupyter_client.kernelspec import KernelSpecManager
where = sys.argv[3]
kwargs = {"user": True} if where == "user" else {"prefix": sys.prefix if where == "sys-prefix" else where}
print(KernelSpecManager().install_kernel_spec(sys.argv[1], kernel_name=sys.argv[2], replace=True, **kwargs))
`;

export async function installKernelspec(options: InstallOptions): Promise<string> {
  const python = pythonExecutable();
  const { stdout } = await run(python, ['-c', FIND_SPEC, options.wrap]).catch(error => {
    throw new Error(
      `no kernelspec named ${JSON.stringify(options.wrap)} to wrap: ${String(
        error.stderr || error.message
      )
        .trim()
        .split('\n')
        .pop()}`
    );
  });
  const { resource_dir: resourceDir, spec } = JSON.parse(stdout) as {
    resource_dir: string;
    spec: {
      argv: string[];
      display_name: string;
      language: string;
      env?: object;
      metadata?: object;
    };
  };
  if (spec.metadata && 'kernel_checkpoint' in spec.metadata) {
    throw new Error(
      `kernelspec ${options.wrap} is already checkpointable; wrap the kernel it wraps instead`
    );
  }
  const name = options.name ?? `${options.wrap}-checkpoint`;
  // A bare "python" is resolved by Jupyter only in argv[0]; here it is not argv[0] any more.
  const wrapped = spec.argv.map((arg, i) =>
    i === 0 && /^python(\d(\.\d+)?)?$/.test(arg)
      ? python
      : arg.replace('{connection_file}', CONNECTION_PLACEHOLDER)
  );
  const argv = [
    selfCommand(),
    'run',
    '--kernel-name',
    name,
    '--display-name',
    spec.display_name,
    '--language',
    spec.language,
    '--engine',
    options.engine,
    ...(options.store ? ['--store', options.store] : []),
    '-f',
    '{connection_file}',
    '--',
    ...wrapped
  ];
  const kernelJson = {
    argv,
    display_name: `${spec.display_name} (checkpointable)`,
    language: spec.language,
    // The supervisor answers interrupt_request by signalling the kernel, whichever engine runs it.
    interrupt_mode: 'message',
    env: spec.env ?? {},
    metadata: {
      ...(spec.metadata ?? {}),
      kernel_checkpoint: { wraps: options.wrap, engine: options.engine }
    }
  };
  const staging = await fs.mkdtemp(path.join(os.tmpdir(), 'kernel-checkpoint-spec-'));
  try {
    for (const entry of await fs.readdir(resourceDir)) {
      if (entry !== 'kernel.json') {
        await fs.cp(path.join(resourceDir, entry), path.join(staging, entry), { recursive: true });
      }
    }
    await fs.writeFile(
      path.join(staging, 'kernel.json'),
      JSON.stringify(kernelJson, null, 2) + '\n'
    );
    const where = options.user ? 'user' : options.prefix ? options.prefix : 'sys-prefix';
    const installed = await run(python, ['-c', INSTALL_SPEC, staging, name, where]);
    return installed.stdout.trim();
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

export function registerInstallCommand(program: Command): void {
  program
    .command('install')
    .description(
      'Install a kernelspec "<display name> (checkpointable)" wrapping an existing kernelspec.'
    )
    .option('--user', 'install for the current user')
    .option('--sys-prefix', 'install into this Python environment (the default)')
    .option('--prefix <dir>', 'install under this prefix')
    .option('--wrap <name>', 'the kernelspec to wrap', 'python3')
    .option('--name <name>', 'name of the new kernelspec (default: <wrap>-checkpoint)')
    .option('--engine <name>', 'checkpoint engine: auto, criu or dmtcp', 'auto')
    .option('--store <dir>', 'image store folder for kernels of this kernelspec')
    .action(async (options: InstallOptions) => {
      const where = await installKernelspec(options);
      process.stdout.write(
        `Installed kernelspec ${options.name ?? `${options.wrap}-checkpoint`} in ${where}\n`
      );
    });
}

// `kernel-checkpoint`: the one command of this project. Each verb lives in its own module;
// this file only declares them. The bundle's entry (scripts/bundle-supervisor.mjs) runs the
// program; nothing here runs on import.

import { Command } from 'commander';

import { registerClientCommands } from './client-commands';
import { onClosedPipe } from './closed-pipe';
import { registerDoctorCommand } from './doctor';
import { registerInstallCommand } from './install';
import { registerRunCommand } from './run';
import { registerStoreCommand } from './store-command';

export function buildProgram(): Command {
  const program = new Command('kernel-checkpoint')
    .description(
      'Checkpoint-restart for Jupyter kernels: run a kernel under a checkpoint engine (CRIU, DMTCP), ' +
        'checkpoint it and restore it later.'
    )
    .showHelpAfterError()
    .hook('preAction', (_program, verb) => onClosedPipe(verb.name() === 'run' ? 'ignore' : 'exit'));
  registerRunCommand(program);
  registerInstallCommand(program);
  registerDoctorCommand(program);
  registerClientCommands(program);
  registerStoreCommand(program);
  return program;
}

// `kernel-checkpoint doctor`: which engines work here, and for each that does not, why.

import type { Command } from 'commander';

import { createEngine, engineNames } from '../engines';
import type { EngineProbe } from '../engines/engine';

export async function probeAll(): Promise<EngineProbe[]> {
  return Promise.all(engineNames().map(name => createEngine(name).probe()));
}

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description('Report which checkpoint engines work on this machine, and why the others do not.')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { json?: boolean }) => {
      const probes = await probeAll();
      if (options.json) {
        process.stdout.write(JSON.stringify({ engines: probes }, null, 2) + '\n');
      } else {
        for (const probe of probes) {
          const head = `${probe.name.padEnd(6)} ${probe.ok ? 'ok' : 'unavailable'}`;
          const version = probe.version
            ? ` (version ${probe.version}${probe.path ? `, ${probe.path}` : ''})`
            : '';
          process.stdout.write(`${head}${version}\n`);
          if (!probe.ok) {
            process.stdout.write(
              `       why: ${probe.problem}\n       fix: ${probe.remedy ?? '-'}\n`
            );
          }
        }
      }
      process.exitCode = probes.some(probe => probe.ok) ? 0 : 1;
    });
}

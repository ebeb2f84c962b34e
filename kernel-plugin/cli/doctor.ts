// `kernel-checkpoint doctor`: which engines work here, and for each that does not, why; and
// which Node runs the supervisor.

import type { Command } from 'commander';

import { createEngine, engineNames } from '../engines';
import type { RestoreMode } from '../engines/criu-lazy';
import type { EngineProbe } from '../engines/engine';
import { criuInstallHintFor } from './criu-install-hint';

/** The Node this runs on, and why the launcher (kernel_checkpoint._launcher) chose it. */
function nodeInUse(): { version: string; path: string; origin: string } {
  return {
    version: process.version,
    path: process.execPath,
    origin:
      process.env.KERNEL_CHECKPOINT_NODE_ORIGIN ?? 'run without the kernel-checkpoint launcher'
  };
}

/** Each engine's probe, and for one that runs here, whether its restores are lazy and why. */
export async function probeAll(): Promise<(EngineProbe & { lazy_restore?: RestoreMode })[]> {
  return Promise.all(
    engineNames().map(async name => {
      const engine = createEngine(name);
      const probe = await engine.probe();
      const mode = probe.ok ? await engine.restoreMode?.().catch(() => undefined) : undefined;
      return mode ? { ...probe, lazy_restore: mode } : probe;
    })
  );
}

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description('Report which checkpoint engines work on this machine, and why the others do not.')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { json?: boolean }) => {
      const probes = await probeAll();
      const node = nodeInUse();
      const criuInstall = criuInstallHintFor(probes);
      if (options.json) {
        process.stdout.write(
          JSON.stringify({ engines: probes, node, criu_install: criuInstall }, null, 2) + '\n'
        );
      } else {
        process.stdout.write(`node   ${node.version} (${node.path}), ${node.origin}\n`);
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
          if (probe.lazy_restore) {
            const mode = probe.lazy_restore;
            process.stdout.write(
              `       restore: ${mode.lazy ? 'lazy' : 'full (not lazy)'}, ${mode.reason}\n`
            );
          }
          if (probe.name === 'criu' && criuInstall) {
            process.stdout.write(`       get: ${criuInstall}\n`);
          }
        }
      }
      process.exitCode = probes.some(probe => probe.ok) ? 0 : 1;
    });
}

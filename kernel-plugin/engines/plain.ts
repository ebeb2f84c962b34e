// The plain engine: a kernel without snapshots. The supervisor starts the kernel with it when
// the chosen engine cannot run here (its probe failed), so the notebook still works; a
// checkpoint or restore then fails with engine_unavailable, saying why the real engine cannot.

import {
  EngineError,
  type Engine,
  type EngineProbe,
  type KernelProcess,
  type LaunchSpec
} from './engine';
import { startPipelineKernel } from './process';
import { diesWithParent } from './tools';

/** Starts `spec.argv` in a session of its own, through the real pipe of `startPipelineKernel`. */
export function launchPlainKernel(spec: LaunchSpec): Promise<KernelProcess> {
  // `setsid --fork --wait` is the launcher a pipeline kernel has between the shell and the
  // kernel (startPipelineKernel waits for the launcher, then for its child), as every engine's.
  // `setsid --fork`'s child does not inherit the launcher's death signal: the kernel gets its own
  // (docs/engines.md, how nothing outlives the supervisor).
  return startPipelineKernel(['setsid', '--fork', '--wait', ...diesWithParent(spec.argv)], spec);
}

export class PlainEngine implements Engine {
  readonly name = 'plain';

  probe(): Promise<EngineProbe> {
    return Promise.resolve({ name: this.name, ok: true, version: 'none' });
  }

  launch(spec: LaunchSpec): Promise<KernelProcess> {
    return launchPlainKernel(spec);
  }

  checkpoint(): Promise<never> {
    return Promise.reject(noSnapshots());
  }

  restore(): Promise<never> {
    return Promise.reject(noSnapshots());
  }
}

function noSnapshots(): EngineError {
  return new EngineError('engine_unavailable', 'This kernel runs without a checkpoint engine.');
}

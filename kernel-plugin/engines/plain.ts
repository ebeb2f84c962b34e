// The plain engine: a kernel without snapshots. The supervisor starts the kernel with it when
// the chosen engine cannot run here (its probe failed), so the notebook still works; a
// checkpoint or restore then fails with engine_unavailable, saying why the real engine cannot.

import {
  EngineError,
  type Engine,
  type EngineProbe,
  type KernelProcess,
  type LaunchSpec,
  type Snapshot
} from './engine';
import { startPipelineKernel } from './process';

/** Starts `spec.argv` in a session of its own, through the real pipe of `startPipelineKernel`. */
export function launchPlainKernel(spec: LaunchSpec): Promise<KernelProcess> {
  // setsid --wait: a launcher between the shell and the kernel, as every engine has one, and
  // the kernel in its own session (a Ctrl-C in a terminal reaches the supervisor only).
  return startPipelineKernel(['setsid', '--fork', '--wait', ...spec.argv], spec);
}

export class PlainEngine implements Engine {
  readonly name = 'plain';

  probe(): Promise<EngineProbe> {
    return Promise.resolve({ name: this.name, ok: true, version: 'none' });
  }

  launch(spec: LaunchSpec): Promise<KernelProcess> {
    return launchPlainKernel(spec);
  }

  checkpoint(): Promise<Snapshot> {
    return Promise.reject(
      new EngineError('engine_unavailable', 'This kernel runs without a checkpoint engine.')
    );
  }

  restore(): Promise<KernelProcess> {
    return Promise.reject(
      new EngineError('engine_unavailable', 'This kernel runs without a checkpoint engine.')
    );
  }
}

// The fake engine, for tests only: it lets the test suites drive every checkpoint and restore
// path (success, busy, failure, abort) on any machine, without privileges, CRIU or DMTCP.
// Select it with `--engine fake` or KERNEL_CHECKPOINT_ENGINE=fake; `--engine auto` never picks
// it and `doctor` does not list it. It takes no snapshot of the process:
//
// - launch starts a plain kernel (engines/plain.ts) and remembers how;
// - checkpoint writes into the image folder a record of what the flow asked for (argv, the
//   environment's names, work folder, time) and a copy of the kernel's state marker;
// - restore starts a plain kernel again from that record, at the image's lineage endpoints.
//
// The state marker: the kernel gets KERNEL_CHECKPOINT_FAKE_STATE, a file in its work folder.
// The in-kernel plugin (kernel_checkpoint/_fake_state.py, active only when that variable is set)
// writes the picklable user variables there when it prepares for a checkpoint, and loads them
// back when it starts and the file exists. So `x = 42; checkpoint; x = 7; restore` gives 42.
//
// Failures on demand, read from the supervisor's environment at each call:
// KERNEL_CHECKPOINT_FAKE_FAIL=checkpoint|restore makes that call fail with engine_failed;
// KERNEL_CHECKPOINT_FAKE_DELAY_MS=N makes checkpoint and restore take N ms longer.

import { promises as fs } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  EngineError,
  type Engine,
  type EngineProbe,
  type KernelProcess,
  type LaunchSpec,
  type Snapshot
} from './engine';
import { launchPlainKernel } from './plain';

export const FAKE_STATE_ENV = 'KERNEL_CHECKPOINT_FAKE_STATE';
export const FAKE_FAIL_ENV = 'KERNEL_CHECKPOINT_FAKE_FAIL';
export const FAKE_DELAY_ENV = 'KERNEL_CHECKPOINT_FAKE_DELAY_MS';
/** The record of one fake snapshot, in its image folder. */
export const FAKE_RECORD = 'fake-image.json';
/** The kernel's state marker, in its work folder and in the image. */
export const FAKE_STATE_FILE = 'fake-state.pickle';

/** What a fake snapshot holds: enough to start the same kernel again. */
export interface FakeRecord {
  argv: string[];
  cwd: string;
  workDir: string;
  /** Names of the kernel's environment variables (values are not kept, but for `envChanges`). */
  envKeys: string[];
  /** Variables the supervisor set or removed (null) for the kernel, against its own. */
  envChanges: Record<string, string | null>;
  /** PID of the kernel process that was "snapshotted". */
  pid: number;
  time: string;
  /** Whether the kernel's state marker was in the work folder, and so is in the image. */
  state: boolean;
}

export class FakeEngine implements Engine {
  readonly name = 'fake';
  /** How each running kernel was launched (or restored), by PID. */
  private readonly launched = new Map<number, LaunchSpec>();

  constructor(private readonly env: NodeJS.ProcessEnv = process.env) {}

  probe(): Promise<EngineProbe> {
    return Promise.resolve({ name: this.name, ok: true, version: 'test-only' });
  }

  async launch(spec: LaunchSpec): Promise<KernelProcess> {
    const env = { ...spec.env, [FAKE_STATE_ENV]: path.join(spec.workDir, FAKE_STATE_FILE) };
    return this.start({ ...spec, env });
  }

  async checkpoint(kernel: KernelProcess, imageDir: string): Promise<Snapshot> {
    const started = Date.now();
    await this.delay();
    const spec = this.launched.get(kernel.pid);
    if (!spec) {
      throw new EngineError('engine_failed', `The fake engine did not start kernel ${kernel.pid}.`);
    }
    const stateFile = path.join(spec.workDir, FAKE_STATE_FILE);
    const state = await fs
      .copyFile(stateFile, path.join(imageDir, FAKE_STATE_FILE))
      .then(() => true)
      .catch(() => false);
    const record: FakeRecord = {
      argv: spec.argv,
      cwd: spec.cwd,
      workDir: spec.workDir,
      envKeys: Object.keys(spec.env).sort(),
      envChanges: this.changesOf(spec.env),
      pid: kernel.pid,
      time: new Date().toISOString(),
      state
    };
    await fs.writeFile(path.join(imageDir, FAKE_RECORD), JSON.stringify(record, null, 1), {
      mode: 0o600
    });
    // After the files: a failed engine may leave a partial image, and the store must discard it.
    this.failIfAsked('checkpoint');
    return { version: 'test-only', frozenMs: Date.now() - started, data: { record: FAKE_RECORD } };
  }

  async restore(
    imageDir: string,
    _data: Record<string, unknown>,
    spec: LaunchSpec
  ): Promise<KernelProcess> {
    await this.delay();
    this.failIfAsked('restore');
    let record: FakeRecord;
    try {
      record = JSON.parse(await fs.readFile(path.join(imageDir, FAKE_RECORD), 'utf8'));
    } catch (error) {
      throw new EngineError(
        'engine_failed',
        `The fake engine cannot read its record in ${imageDir}: ${(error as Error).message}`
      );
    }
    const env: NodeJS.ProcessEnv = { ...spec.env };
    for (const [key, value] of Object.entries(record.envChanges)) {
      if (value === null) {
        delete env[key];
      } else {
        env[key] = value;
      }
    }
    const stateFile = path.join(spec.workDir, FAKE_STATE_FILE);
    env[FAKE_STATE_ENV] = stateFile;
    if (record.state) {
      await fs.copyFile(path.join(imageDir, FAKE_STATE_FILE), stateFile);
      await fs.chmod(stateFile, 0o600);
    }
    return this.start({ argv: record.argv, env, cwd: record.cwd, workDir: spec.workDir });
  }

  private async start(spec: LaunchSpec): Promise<KernelProcess> {
    const kernel = await launchPlainKernel(spec);
    this.launched.set(kernel.pid, spec);
    void kernel.exited.then(() => this.launched.delete(kernel.pid));
    return kernel;
  }

  /** The kernel's environment against the supervisor's: what a restore must set again. */
  private changesOf(kernelEnv: NodeJS.ProcessEnv): Record<string, string | null> {
    const changes: Record<string, string | null> = {};
    for (const [key, value] of Object.entries(kernelEnv)) {
      if (value !== undefined && this.env[key] !== value) {
        changes[key] = value;
      }
    }
    for (const key of Object.keys(this.env)) {
      if (!(key in kernelEnv)) {
        changes[key] = null;
      }
    }
    return changes;
  }

  private failIfAsked(call: 'checkpoint' | 'restore'): void {
    if (this.env[FAKE_FAIL_ENV] === call) {
      throw new EngineError(
        'engine_failed',
        `The fake engine failed the ${call} on demand (${FAKE_FAIL_ENV}=${call}).`
      );
    }
  }

  private async delay(): Promise<void> {
    const ms = Number(this.env[FAKE_DELAY_ENV] ?? 0);
    if (ms > 0) {
      await sleep(ms);
    }
  }
}

// The checkpoint and restore flows, driven through the supervisor's parts with the fake engine
// and a real ipykernel (the project venv's python): success, busy, failures, veto, abort.
// No privileges, CRIU or DMTCP needed.

import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Request, SupervisorMessage } from '../../../protocol/checkpoint-protocol';
import {
  COMM_TARGET,
  PROGRESS_STAGES,
  PROTOCOL_VERSION
} from '../../../protocol/checkpoint-protocol-constants';
import type { Engine } from '../../engines/engine';
import { FAKE_DELAY_ENV, FAKE_FAIL_ENV, FAKE_RECORD, FakeEngine } from '../../engines/fake';
import { isRunning } from '../../engines/process';
import { ImageStore } from '../../store/store';
import { Supervisor } from '../supervisor';
import type { Message } from '../wire';
import { freeConnection, TestClient } from './jupyter-test-client';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
const describeWithPython = existsSync(PYTHON) ? describe : describe.skip;

jest.setTimeout(120000);

/** Sends a request straight to the supervisor; resolves with every message up to its answer. */
function ask(supervisor: Supervisor, request: Omit<Request, 'request_id'>) {
  return new Promise<{ answer: SupervisorMessage; progress: string[] }>(resolve => {
    const progress: string[] = [];
    supervisor.handleRequest(
      { request_id: `test-${Math.random()}`, ...request } as Request,
      message => {
        if (message.type === 'progress') {
          progress.push(message.stage);
        } else {
          resolve({ answer: message, progress });
        }
      }
    );
  });
}

async function waitFor(condition: () => boolean, timeoutMs = 30000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new Error('timed out');
    }
    await new Promise(resolve => setTimeout(resolve, 20));
  }
}

function errorOf(answer: SupervisorMessage) {
  if (answer.type !== 'error') {
    throw new Error(`expected an error, got ${JSON.stringify(answer)}`);
  }
  return answer.error;
}

function checkpointOf(answer: SupervisorMessage) {
  if (answer.type !== 'reply' || !answer.checkpoint) {
    throw new Error(`expected a reply, got ${JSON.stringify(answer)}`);
  }
  return answer.checkpoint;
}

/** A supervisor of a real ipykernel under `engine`, in a private folder, and a client of it. */
async function startKernel(
  makeEngine: (env: NodeJS.ProcessEnv) => Engine,
  notebookPath: string | null = null
) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'kc-flows-'));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    KERNEL_CHECKPOINT_RUNTIME_DIR: path.join(dir, 'run'),
    KERNEL_CHECKPOINT_PLUGIN_PATH: path.join(ROOT, 'kernel-plugin', 'python'),
    IPYTHONDIR: path.join(dir, 'ipython'),
    JUPYTER_PLATFORM_DIRS: '1'
  };
  const store = new ImageStore(path.join(dir, 'store'));
  const connection = await freeConnection();
  const supervisor = new Supervisor({
    connection,
    argv: [PYTHON, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
    engine: makeEngine(env),
    store,
    kernel: { name: 'python3-checkpoint', display_name: 'Python 3', language: 'python' },
    notebookPath,
    cwd: dir,
    env
  });
  const client = new TestClient(connection);
  const stop = async () => {
    client.close();
    await supervisor.stop(0);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await supervisor.start();
    await client.connect();
  } catch (error) {
    await stop();
    throw error;
  }
  return { env, store, supervisor, client, stop };
}

describeWithPython('checkpoint and restore under the fake engine', () => {
  let env: NodeJS.ProcessEnv;
  let store: ImageStore;
  let supervisor: Supervisor;
  let client: TestClient;
  let stop: () => Promise<void>;

  const kernelPid = async () => Number(await client.value('__import__("os").getpid()'));

  beforeAll(async () => {
    ({ env, store, supervisor, client, stop } = await startKernel(
      processEnv => new FakeEngine(processEnv),
      'flows.ipynb'
    ));
    // The first cell waits for the kernel to start.
    expect(await client.value('1 + 1')).toBe(2);
  });

  afterEach(() => {
    delete env[FAKE_FAIL_ENV];
    delete env[FAKE_DELAY_ENV];
    delete env.KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE;
  });

  afterAll(async () => {
    const pid = supervisor.host.kernel?.pid;
    await stop();
    expect(await supervisor.ended).toBe(0);
    if (pid) {
      expect(isRunning(pid)).toBe(false);
    }
  });

  it('restores the state of the checkpoint, in a new kernel process', async () => {
    await client.execute('x = 42');
    const before = await kernelPid();
    const { answer, progress } = await ask(supervisor, { action: 'checkpoint', label: 'answer' });
    const taken = checkpointOf(answer);
    expect(progress).toEqual(PROGRESS_STAGES.slice(0, 5));
    expect(taken.label).toBe('answer');
    expect(taken.engine.name).toBe('fake');
    // The fake snapshot records what the flow asked for.
    const record = JSON.parse(
      readFileSync(path.join(store.imageDir(taken.id), FAKE_RECORD), 'utf8')
    );
    expect(record.argv.slice(1, 3)).toEqual(['-m', 'ipykernel_launcher']);
    expect(record.envKeys).toContain('KERNEL_CHECKPOINT_AGENT');
    expect(record.workDir).toBe(supervisor.host.lineage.ipcDir);
    expect(record.pid).toBe(before);
    expect(record.state).toBe(true);

    await client.execute('x = 7');
    // On by default only in a store of chunks (KERNEL_CHECKPOINT_DEDUP=1), where it costs new
    // bytes alone; asked for here.
    env.KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE = '1';
    const restored = await ask(supervisor, { action: 'restore', checkpoint_id: taken.id });
    // The kernel ran a cell since its checkpoint: once the image is checked, its state is kept
    // as a checkpoint before it is stopped.
    expect(restored.progress).toEqual([
      'verifying',
      ...PROGRESS_STAGES.slice(0, 5),
      ...PROGRESS_STAGES.slice(6, 9)
    ]);
    expect(restored.answer).toMatchObject({ type: 'reply', current_id: taken.id });
    expect(await client.value('x')).toBe(42);
    expect(await kernelPid()).not.toBe(before);
    expect(isRunning(before)).toBe(false);
    const kept = (await store.list()).find(c => c.label === 'before restoring answer');
    expect(kept?.parent_id).toBe(taken.id);

    // No cell ran since a checkpoint: the kernel is that checkpoint, and nothing more is kept.
    checkpointOf((await ask(supervisor, { action: 'checkpoint' })).answer);
    const again = await ask(supervisor, { action: 'restore', checkpoint_id: kept!.id });
    expect(again.progress).toEqual(PROGRESS_STAGES.slice(5, 9));
    expect(await client.value('x')).toBe(7);
    const count = (await store.list()).length;
    await client.execute('x = 8');
    env.KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE = '0';
    const off = await ask(supervisor, { action: 'restore', checkpoint_id: taken.id });
    delete env.KERNEL_CHECKPOINT_KEEP_BEFORE_RESTORE;
    expect(off.progress).toEqual(PROGRESS_STAGES.slice(5, 9));
    // And off by default in a store of whole images.
    await client.execute('x = 9');
    const byDefault = await ask(supervisor, { action: 'restore', checkpoint_id: taken.id });
    expect(byDefault.progress).toEqual(PROGRESS_STAGES.slice(5, 9));
    expect(off.progress).toEqual(PROGRESS_STAGES.slice(5, 9));
    expect((await store.list()).length).toBe(count);
  });

  it('refuses a second checkpoint while one runs, as busy', async () => {
    env[FAKE_DELAY_ENV] = '1500';
    const first = ask(supervisor, { action: 'checkpoint' });
    const second = await ask(supervisor, { action: 'checkpoint' });
    expect(errorOf(second.answer).code).toBe('busy');
    checkpointOf((await first).answer);
  });

  it('keeps the kernel running and leaves no image when the engine fails to checkpoint', async () => {
    await client.execute('y = "kept"');
    const pid = await kernelPid();
    const images = (await store.list()).length;
    env[FAKE_FAIL_ENV] = 'checkpoint';
    const { answer, progress } = await ask(supervisor, { action: 'checkpoint' });
    expect(errorOf(answer)).toMatchObject({ code: 'engine_failed' });
    expect(errorOf(answer).message).toMatch(/on demand/);
    // The snapshot failed after the gate closed: the plugin was told (aborted), and the flow
    // still went through resuming.
    expect(progress).toContain('resuming');
    expect((await store.list()).length).toBe(images);
    expect(readdirSync(store.root).filter(name => name.startsWith('.partial'))).toEqual([]);
    // The same process goes on, and its output flows again (the gate opened on `aborted`).
    expect(await kernelPid()).toBe(pid);
    expect(await client.value('y')).toBe('kept');
  });

  it('starts a fresh kernel, and says so, when the engine fails to restore', async () => {
    await client.execute('z = 1');
    const taken = checkpointOf((await ask(supervisor, { action: 'checkpoint' })).answer);
    const pid = await kernelPid();
    env[FAKE_FAIL_ENV] = 'restore';
    const { answer } = await ask(supervisor, { action: 'restore', checkpoint_id: taken.id });
    expect(errorOf(answer).code).toBe('engine_failed');
    expect(errorOf(answer).message).toMatch(/A fresh kernel was started instead\.$/);
    expect(await client.value('"z" in globals()')).toBe(false);
    expect(await kernelPid()).not.toBe(pid);
    expect(supervisor.host.currentId).toBeNull();
  });

  it('lets a before-checkpoint hook veto, and changes nothing', async () => {
    await client.execute(
      'import kernel_checkpoint\n' +
        '@kernel_checkpoint.before_checkpoint\n' +
        'def _refuse():\n' +
        '    raise kernel_checkpoint.Veto("not now")'
    );
    const images = (await store.list()).length;
    const { answer, progress } = await ask(supervisor, { action: 'checkpoint' });
    expect(errorOf(answer)).toMatchObject({ code: 'vetoed' });
    expect(errorOf(answer).message).toMatch(/not now/);
    expect(progress).toEqual(['preparing']);
    expect((await store.list()).length).toBe(images);
    await client.execute('kernel_checkpoint.unregister_hook(_refuse)');
    expect(await client.value('"still here"')).toBe('still here');
  });

  it('interrupts a running cell by a signal, for whichever process runs the kernel', async () => {
    const cell = client.execute('import time; time.sleep(60)');
    await waitFor(() => supervisor.host.kernel !== null && !supervisor.kernelIdle);
    const reply = await client.reply(await client.send('control', 'interrupt_request', {}));
    expect(reply.content.status).toBe('ok');
    expect((await cell).error?.ename).toBe('KeyboardInterrupt');
  });

  it('ends a cell the restore cut short with an error saying why', async () => {
    const taken = checkpointOf((await ask(supervisor, { action: 'checkpoint' })).answer);
    const cell = client.execute('import time; time.sleep(60)');
    await waitFor(() => !supervisor.kernelIdle);
    const restored = await ask(supervisor, { action: 'restore', checkpoint_id: taken.id });
    expect(restored.answer.type).toBe('reply');
    const result = await cell;
    expect(result.status).toBe('error');
    expect(result.error?.ename).toBe('KernelRestored');
    expect(await client.value('"alive"')).toBe('alive');
  });

  it('answers kernel_info for the kernel once it has answered one', async () => {
    // The first goes to the kernel (a client connecting sends one), whose reply is kept.
    await client.reply(await client.send('shell', 'kernel_info_request', {}));
    await client.execute('import random; random.seed(3); s = random.getstate()');
    for (const channel of ['shell', 'control'] as const) {
      const msgId = await client.send(channel, 'kernel_info_request', {});
      const reply = await client.reply(msgId);
      expect(reply.header.msg_type).toBe('kernel_info_reply');
      expect(reply.content.implementation).toBe('ipython');
    }
    expect(await client.value('random.getstate() == s')).toBe(true);
  });
});

describeWithPython('kernel_info answered for a kernel that has just started', () => {
  it('ends with idle, as JupyterLab waits for before it takes the kernel as ready', async () => {
    const { client, stop } = await startKernel(env => new FakeEngine(env));
    try {
      // The server's own first request goes to the kernel; no cell has run yet, and the
      // kernel's "starting" status is the last one that is not a kernel_info answer's.
      await client.reply(await client.send('shell', 'kernel_info_request', {}));
      const msgId = await client.send('shell', 'kernel_info_request', {});
      await client.reply(msgId);
      await client.iopubMessage(
        m =>
          m.header.msg_type === 'status' &&
          m.parent_header.msg_id === msgId &&
          m.content.execution_state === 'idle'
      );
      // While a cell runs, the idle waits for the cell's end (no client thinks it ended).
      const cell = client.execute('import time; time.sleep(1.5)');
      await new Promise(resolve => setTimeout(resolve, 300));
      const during = await client.send('control', 'kernel_info_request', {});
      await client.reply(during);
      const idleOf = (id: string) => (m: Message) =>
        m.header.msg_type === 'status' &&
        m.parent_header.msg_id === id &&
        m.content.execution_state === 'idle';
      await cell;
      const idle = await client.iopubMessage(idleOf(during));
      const cellIdle = await client.iopubMessage(
        m =>
          m.header.msg_type === 'status' &&
          m.parent_header.msg_type === 'execute_request' &&
          m.content.execution_state === 'idle'
      );
      expect(client.iopubIndex(idle)).toBeGreaterThan(client.iopubIndex(cellIdle));
    } finally {
      await stop();
    }
  });
});

describeWithPython('the comm, and the requests around images', () => {
  let env: NodeJS.ProcessEnv;
  let supervisor: Supervisor;
  let client: TestClient;
  let stop: () => Promise<void>;

  beforeAll(async () => {
    ({ env, supervisor, client, stop } = await startKernel(
      processEnv => new FakeEngine(processEnv),
      'comm.ipynb'
    ));
  });

  afterEach(() => {
    delete env[FAKE_DELAY_ENV];
  });

  afterAll(() => stop());

  const commData = (commId: string, type: string) => (message: Message) =>
    message.header.msg_type === 'comm_msg' &&
    message.content.comm_id === commId &&
    message.content.data?.type === type;

  it('greets a client of its protocol and refuses another major version', async () => {
    await client.send('shell', 'comm_open', {
      comm_id: 'good',
      target_name: COMM_TARGET,
      data: { protocol_version: PROTOCOL_VERSION }
    });
    const hello = await client.iopubMessage(commData('good', 'hello'));
    expect(hello.content.data.status).toMatchObject({ engine_ok: true, busy: null });
    await client.send('shell', 'comm_open', {
      comm_id: 'old',
      target_name: COMM_TARGET,
      data: { protocol_version: '0.9' }
    });
    const refused = await client.iopubMessage(commData('old', 'error'));
    expect(refused.content.data.error.code).toBe('unsupported_protocol');
  });

  it('answers requests sent on the comm', async () => {
    await client.send('shell', 'comm_msg', {
      comm_id: 'good',
      data: { request_id: 'r1', action: 'status' }
    });
    const reply = await client.iopubMessage(commData('good', 'reply'));
    expect(reply.content.data.status.kernel_name).toBe('python3-checkpoint');
    await client.send('shell', 'comm_msg', { comm_id: 'good', data: { action: 'status' } });
    const invalid = await client.iopubMessage(commData('good', 'error'));
    expect(invalid.content.data.error.code).toBe('invalid_request');
  });

  it('labels, lists and deletes images, and tells every comm', async () => {
    const taken = checkpointOf((await ask(supervisor, { action: 'checkpoint' })).answer);
    const labelled = await ask(supervisor, {
      action: 'label',
      checkpoint_id: taken.id,
      label: 'named'
    });
    expect(checkpointOf(labelled.answer).label).toBe('named');
    const listed = (await ask(supervisor, { action: 'list' })).answer;
    expect(listed.type === 'reply' && listed.checkpoints?.map(c => c.id)).toEqual([taken.id]);
    await ask(supervisor, { action: 'delete', checkpoint_id: taken.id });
    const event = await client.iopubMessage(
      m => commData('good', 'event')(m) && m.content.data.event === 'deleted'
    );
    expect(event.content.data).toMatchObject({ checkpoint_id: taken.id, current_id: null });
    const missing = await ask(supervisor, { action: 'restore', checkpoint_id: taken.id });
    expect(errorOf(missing.answer).code).toBe('unknown_checkpoint');
    const noId = await ask(supervisor, { action: 'delete' });
    expect(errorOf(noId.answer).code).toBe('invalid_request');
  });

  it('says busy, not idle, until a checkpoint asked on the comm has ended', async () => {
    env[FAKE_DELAY_ENV] = '800';
    const msgId = await client.send('shell', 'comm_msg', {
      comm_id: 'good',
      data: { request_id: 'slow', action: 'checkpoint' }
    });
    const ofRequest = (state: string) => (message: Message) =>
      message.header.msg_type === 'status' &&
      message.parent_header.msg_id === msgId &&
      message.content.execution_state === state;
    await client.iopubMessage(ofRequest('busy'));
    const reply = await client.iopubMessage(
      message => commData('good', 'reply')(message) && message.content.data.request_id === 'slow'
    );
    const idle = await client.iopubMessage(ofRequest('idle'));
    // The kernel indicator shows idle only once the kernel is back: after the reply, not at once.
    expect(Date.parse(idle.header.date)).toBeGreaterThanOrEqual(Date.parse(reply.header.date));
    expect(client.iopubIndex(idle)).toBeGreaterThan(client.iopubIndex(reply));
  });
});

/** An engine that cannot run here: the kernel must still start (plainly) and say why. */
class UnavailableEngine extends FakeEngine {
  probe() {
    return Promise.resolve({
      name: 'fake',
      ok: false,
      problem: 'The fake engine is switched off.',
      remedy: 'Switch it on.'
    });
  }
}

describeWithPython('a kernel whose engine cannot run here', () => {
  it('runs under the plain engine, and a checkpoint says why it cannot be taken', async () => {
    const { supervisor, client, stop } = await startKernel(env => new UnavailableEngine(env));
    try {
      expect(await client.value('6 * 7')).toBe(42);
      const { answer } = await ask(supervisor, { action: 'checkpoint' });
      expect(errorOf(answer)).toMatchObject({
        code: 'engine_unavailable',
        message: 'The fake engine is switched off. Switch it on.'
      });
      expect(supervisor.requests.status()).toMatchObject({ engine_ok: false });
    } finally {
      await stop();
    }
  });
});

/** A fake engine whose restored kernels get their memory back when the test says so. */
class SlowMemoryEngine extends FakeEngine {
  memoryBack: () => void = () => undefined;
  untilMemoryBack(): Promise<void> {
    return new Promise(resolve => (this.memoryBack = resolve));
  }
}

describeWithPython('sealing after a restore', () => {
  it('waits until the restored kernel has its memory back (a lazy restore on two cores)', async () => {
    let engine: SlowMemoryEngine | null = null;
    const { supervisor, store, stop } = await startKernel(
      env => (engine = new SlowMemoryEngine(env))
    );
    try {
      const taken = checkpointOf((await ask(supervisor, { action: 'checkpoint' })).answer);
      expect(store.background.paused).toBe(false);
      const restored = await ask(supervisor, { action: 'restore', checkpoint_id: taken.id });
      expect(restored.answer).toMatchObject({ type: 'reply', current_id: taken.id });
      // Answered, but the kernel's pages are still arriving: sealing waits.
      expect(store.background.paused).toBe(true);
      engine!.memoryBack();
      await new Promise(resolve => setImmediate(resolve));
      expect(store.background.paused).toBe(false);
    } finally {
      await stop();
    }
  });
});

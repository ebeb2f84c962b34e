import { Signal } from '@lumino/signaling';
import { KernelCheckpointSession } from '../session';
import { ckpt, FakeKernel, status } from './fakes';

function fakeContext() {
  const owner = {};
  return {
    path: 'a.ipynb',
    session: null,
    ready: new Promise<void>(() => undefined),
    kernelChanged: new Signal(owner),
    statusChanged: new Signal(owner),
    iopubMessage: new Signal<object, unknown>(owner),
    propertyChanged: new Signal<object, string>(owner)
  };
}

describe('KernelCheckpointSession.path', () => {
  it("is the document's, and says so at once when the notebook is renamed", () => {
    const context = fakeContext();
    const document = { path: 'Untitled.ipynb', pathChanged: new Signal<object, string>({}) };
    const session = new KernelCheckpointSession({ sessionContext: context as never, document });
    const seen: string[] = [];
    session.pathChanged.connect((_, path) => seen.push(path));
    expect(session.path).toBe('Untitled.ipynb');
    // The server has not moved the session yet (its path is still the old one, or none).
    document.path = 'results.ipynb';
    document.pathChanged.emit('results.ipynb');
    expect(session.path).toBe('results.ipynb');
    expect(seen).toEqual(['results.ipynb']);
    session.dispose();
  });
});

const executeInput = (count: number) => ({
  header: { msg_type: 'execute_input' },
  content: { code: 'x', execution_count: count }
});

describe('KernelCheckpointSession.executionCount', () => {
  it("follows the kernel's cells, then the restored checkpoint's count", () => {
    const context = fakeContext();
    const session = new KernelCheckpointSession({ sessionContext: context as never });
    expect(session.executionCount).toBeNull();
    context.iopubMessage.emit(executeInput(11));
    context.iopubMessage.emit(executeInput(12));
    expect(session.executionCount).toBe(12);
    // Restored from a checkpoint taken after cell 4: the notebook's cells still say 12.
    const old = ckpt('ckpt-old', null, '2026-11-26T10:00:00Z', {
      state: { execution_count: 4, variables: [] }
    });
    session.model.setCheckpoints([old], null);
    (session as unknown as { _restoredFrom(id: string): void })._restoredFrom('ckpt-old');
    expect(session.executionCount).toBe(4);
    context.iopubMessage.emit(executeInput(5));
    expect(session.executionCount).toBe(5);
    context.kernelChanged.emit(null);
    expect(session.executionCount).toBeNull();
    session.dispose();
  });
});

const tick = () => new Promise(resolve => setTimeout(resolve, 0));

/** A session on a checkpointable fake kernel, once the supervisor said hello (its first list sent). */
async function connected(identity?: KernelCheckpointSession.IIdentity) {
  const kernel = Object.assign(new FakeKernel(), {
    name: 'python3-checkpoint',
    spec: Promise.resolve({ display_name: 'Python 3', metadata: { kernel_checkpoint: {} } })
  });
  const context = { ...fakeContext(), session: { kernel }, ready: Promise.resolve() };
  const session = new KernelCheckpointSession({ sessionContext: context as never, identity });
  for (let i = 0; i < 5 && kernel.comms.length === 0; i++) {
    await tick();
  }
  const comm = kernel.last;
  comm.receive({ type: 'hello', status: status() });
  await tick();
  return { session, context, comm };
}

describe('KernelCheckpointSession.refreshLive', () => {
  async function attached() {
    const { session, context, comm } = await connected();
    const list = comm.lastRequest();
    expect(list.action).toBe('list');
    comm.receive({
      type: 'reply',
      request_id: list.request_id,
      action: 'list',
      checkpoints: [],
      current_id: null
    });
    await tick();
    return { session, context, comm };
  }

  const summaryOf = (count: number) => ({
    execution_count: count,
    variables: [{ name: 'x', type: 'int', size_bytes: 28 }],
    cell_running: false
  });

  it('reads the running kernel after connecting and after each cell, not after a comm answer', async () => {
    const { session, context, comm } = await attached();
    const first = comm.lastRequest();
    expect(first.action).toBe('summary');
    comm.receive({
      type: 'reply',
      request_id: first.request_id,
      action: 'summary',
      summary: summaryOf(1),
      current_id: null
    });
    await tick();
    expect(session.model.live?.summary?.execution_count).toBe(1);
    const sent = comm.sent.length;

    // The supervisor's own answers come wrapped in busy/idle: no new read (it would loop).
    const idle = (parent: string) => ({
      header: { msg_type: 'status' },
      parent_header: { msg_type: parent },
      content: { execution_state: 'idle' }
    });
    context.iopubMessage.emit(idle('comm_msg'));
    await tick();
    expect(comm.sent.length).toBe(sent);

    // A cell ended: read again.
    context.iopubMessage.emit(idle('execute_request'));
    await tick();
    const again = comm.lastRequest();
    expect(again.action).toBe('summary');
    comm.receive({
      type: 'error',
      request_id: again.request_id,
      action: 'summary',
      error: { code: 'busy', message: 'A checkpoint is under way.' }
    });
    await tick();
    expect(session.model.live).toEqual({ summary: null, error: 'A checkpoint is under way.' });
    session.dispose();
  });
});

describe('KernelCheckpointSession.refresh and the notebook id', () => {
  async function listed(identity: KernelCheckpointSession.IIdentity, notebookId?: string) {
    const { session, comm } = await connected(identity);
    const list = comm.lastRequest();
    comm.receive({
      type: 'reply',
      request_id: list.request_id,
      action: 'list',
      checkpoints: [ckpt('ckpt-a', null, '2026-12-03T10:00:00Z', { notebook_id: 'nb-x' })],
      current_id: null,
      ...(notebookId ? { notebook_id: notebookId } : {})
    });
    await tick();
    session.dispose();
    return list;
  }

  const identity = (own: string | null) => {
    const adopted: string[] = [];
    let id = own;
    return {
      adopted,
      identity: {
        get: () => id,
        ensure: () => (id ??= 'fresh'),
        saved: () => '2026-12-03T09:59:00.000000Z',
        adopt: (taken: string) => {
          adopted.push(taken);
          id = taken;
        }
      }
    };
  };

  it("sends the file's save time, and takes the id the supervisor found when it has none", async () => {
    const { adopted, identity: own } = identity(null);
    const list = await listed(own, 'nb-x');
    expect(list.action).toBe('list');
    expect(list.notebook_id).toBeNull();
    expect(list.notebook_saved).toBe('2026-12-03T09:59:00.000000Z');
    expect(adopted).toEqual(['nb-x']);
  });

  it('keeps its own id, and takes none when the supervisor found none', async () => {
    const mine = identity('nb-mine');
    await listed(mine.identity, 'nb-x');
    expect(mine.adopted).toEqual([]);
    const none = identity(null);
    await listed(none.identity);
    expect(none.adopted).toEqual([]);
  });
});

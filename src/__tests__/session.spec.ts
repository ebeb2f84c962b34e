import { Signal } from '@lumino/signaling';
import { KernelCheckpointSession } from '../session';
import { ckpt } from './fakes';

function fakeContext() {
  const owner = {};
  return {
    path: 'a.ipynb',
    session: null,
    ready: new Promise<void>(() => undefined),
    kernelChanged: new Signal(owner),
    statusChanged: new Signal(owner),
    iopubMessage: new Signal<object, unknown>(owner)
  };
}

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

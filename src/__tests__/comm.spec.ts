import { COMM_TARGET } from '../../protocol/checkpoint-protocol-constants';
import { CheckpointClient, CheckpointError, NotCheckpointableError } from '../comm';
import type { Progress } from '../../protocol/checkpoint-protocol';
import { FakeKernel, ckpt, flush, status } from './fakes';

async function connected(options: Partial<CheckpointClient.IOptions> = {}) {
  const kernel = new FakeKernel();
  const client = new CheckpointClient({ kernel, helloTimeout: 1000, ...options });
  const p = client.connect();
  kernel.last.receive({ type: 'hello', status: status({ current_id: null }) });
  await p;
  return { kernel, client, comm: kernel.last };
}

describe('CheckpointClient', () => {
  afterEach(() => {
    jest.useRealTimers();
  });

  describe('connect', () => {
    it('opens the kernel_checkpoint comm with the protocol version and resolves on hello', async () => {
      const kernel = new FakeKernel();
      const client = new CheckpointClient({ kernel });
      const p = client.connect();
      expect(kernel.comms).toHaveLength(1);
      expect(kernel.last.targetName).toBe(COMM_TARGET);
      expect(kernel.last.opened).toEqual({ protocol_version: '1.0', client: 'jupyterlab' });
      expect(client.state).toBe('connecting');
      const s = status({ current_id: 'ckpt-20261126T120000Z-abcdef' });
      kernel.last.receive({ type: 'hello', status: s });
      await expect(p).resolves.toEqual(s);
      expect(client.state).toBe('ready');
      expect(client.status).toEqual(s);
    });

    it('asks JupyterLab not to start a kernel subshell for the comm', async () => {
      const { comm } = await connected();
      expect(comm.commsOverSubshells).toBe('disabled');
    });

    it('is not checkpointable when no hello comes within the timeout', async () => {
      jest.useFakeTimers();
      const kernel = new FakeKernel();
      const client = new CheckpointClient({ kernel, helloTimeout: 3000 });
      const p = client.connect();
      jest.advanceTimersByTime(2999);
      await flush();
      expect(client.state).toBe('connecting');
      jest.advanceTimersByTime(1);
      await expect(p).rejects.toBeInstanceOf(NotCheckpointableError);
      await expect(p).rejects.toMatchObject({ reason: 'no_hello', code: 'not_checkpointable' });
      expect(client.state).toBe('unavailable');
      expect(kernel.last.closed).toBe(true);
    });

    it('is not checkpointable when the kernel closes the comm (ipykernel: unknown target)', async () => {
      const kernel = new FakeKernel();
      const client = new CheckpointClient({ kernel, helloTimeout: 60_000 });
      const p = client.connect();
      kernel.last.closeFromKernel();
      await expect(p).rejects.toMatchObject({ reason: 'comm_closed' });
      expect(client.state).toBe('unavailable');
    });

    it('refuses a supervisor with another major protocol version', async () => {
      const kernel = new FakeKernel();
      const client = new CheckpointClient({ kernel });
      const p = client.connect();
      kernel.last.receive({ type: 'hello', status: { ...status(), protocol_version: '2.0' } });
      await expect(p).rejects.toMatchObject({ reason: 'protocol' });
      expect(client.state).toBe('unavailable');
    });
  });

  describe('request', () => {
    it('sends request_id and action and resolves with the reply of the same request_id', async () => {
      const { client, comm } = await connected();
      const p1 = client.request('list', { notebook_path: 'a.ipynb', scope: 'session' });
      const p2 = client.request('status');
      const r1 = comm.sent[0] as { request_id: string; action: string; notebook_path: string };
      const r2 = comm.sent[1] as { request_id: string; action: string };
      expect(r1.action).toBe('list');
      expect(r1.notebook_path).toBe('a.ipynb');
      expect(r1.request_id).toBeTruthy();
      expect(r1.request_id).not.toBe(r2.request_id);
      const settled: string[] = [];
      void p1.then(() => settled.push('p1'));
      void p2.then(() => settled.push('p2'));

      // Answer the second first: each promise gets its own reply.
      comm.receive({
        type: 'reply',
        request_id: r2.request_id,
        action: 'status',
        current_id: null
      });
      await flush();
      expect(settled).toEqual(['p2']);
      const list = [ckpt('ckpt-20261126T120000Z-000001', null, '2026-11-26T12:00:00Z')];
      comm.receive({
        type: 'reply',
        request_id: r1.request_id,
        action: 'list',
        checkpoints: list,
        current_id: null
      });
      await expect(p1).resolves.toMatchObject({ checkpoints: list });
      expect(client.pendingCount).toBe(0);
    });

    it('ignores replies with unknown request ids', async () => {
      const { client, comm } = await connected();
      const p = client.request('status');
      let done = false;
      void p.then(() => (done = true));
      comm.receive({
        type: 'reply',
        request_id: 'someone-else',
        action: 'status',
        current_id: null
      });
      await flush();
      expect(done).toBe(false);
      expect(client.pendingCount).toBe(1);
    });

    it('reports progress of a request to its callback and to the progress signal', async () => {
      const { client, comm } = await connected();
      const seen: string[] = [];
      const signalled: Progress[] = [];
      client.progress.connect((_, p) => signalled.push(p));
      const p = client.request(
        'checkpoint',
        { label: 'x' },
        { onProgress: pr => seen.push(pr.stage) }
      );
      const id = comm.lastRequest().request_id;
      comm.receive({ type: 'progress', request_id: id, action: 'checkpoint', stage: 'quiescing' });
      comm.receive({
        type: 'progress',
        request_id: id,
        action: 'checkpoint',
        stage: 'snapshotting'
      });
      comm.receive({
        type: 'progress',
        request_id: 'other',
        action: 'checkpoint',
        stage: 'saving'
      });
      expect(seen).toEqual(['quiescing', 'snapshotting']);
      expect(signalled.map(s => s.stage)).toEqual(['quiescing', 'snapshotting', 'saving']);
      const c = ckpt('ckpt-20261126T120000Z-000002', null, '2026-11-26T12:00:00Z');
      comm.receive({
        type: 'reply',
        request_id: id,
        action: 'checkpoint',
        checkpoint: c,
        current_id: c.id
      });
      await expect(p).resolves.toMatchObject({ checkpoint: c, current_id: c.id });
    });

    it('rejects with the supervisor error, carrying code and message', async () => {
      const { client, comm } = await connected();
      const p = client.request('restore', { checkpoint_id: 'ckpt-x' });
      comm.receive({
        type: 'error',
        request_id: comm.lastRequest().request_id,
        action: 'restore',
        error: {
          code: 'corrupt_image',
          message: 'pages-1.img does not match its checksum.',
          detail: 'sha'
        }
      });
      const error = await p.catch(e => e);
      expect(error).toBeInstanceOf(CheckpointError);
      expect(error.code).toBe('corrupt_image');
      expect(error.message).toBe('pages-1.img does not match its checksum.');
      expect(error.detail).toBe('sha');
      expect(error.action).toBe('restore');
    });

    it('times out per action', async () => {
      jest.useFakeTimers();
      const { client } = await connected({ timeouts: { list: 1000, checkpoint: 60_000 } });
      const list = client.request('list');
      const cp = client.request('checkpoint');
      let cpSettled = false;
      cp.catch(() => undefined).finally(() => (cpSettled = true));
      jest.advanceTimersByTime(1000);
      await expect(list).rejects.toMatchObject({ code: 'timeout', action: 'list' });
      await flush();
      expect(cpSettled).toBe(false);
      jest.advanceTimersByTime(59_000);
      await expect(cp).rejects.toMatchObject({ code: 'timeout', action: 'checkpoint' });
      expect(client.pendingCount).toBe(0);
    });

    it('an explicit timeout overrides the action default', async () => {
      jest.useFakeTimers();
      const { client } = await connected();
      const p = client.request('checkpoint', {}, { timeout: 50 });
      jest.advanceTimersByTime(50);
      await expect(p).rejects.toMatchObject({ code: 'timeout' });
    });

    it('a late reply after a timeout is ignored', async () => {
      jest.useFakeTimers();
      const { client, comm } = await connected({ timeouts: { status: 10 } });
      const p = client.request('status');
      const id = comm.lastRequest().request_id;
      jest.advanceTimersByTime(10);
      await expect(p).rejects.toMatchObject({ code: 'timeout' });
      expect(() =>
        comm.receive({ type: 'reply', request_id: id, action: 'status', current_id: null })
      ).not.toThrow();
    });

    it('fails pending requests when the comm closes', async () => {
      const { client, comm } = await connected();
      const p = client.request('checkpoint');
      comm.closeFromKernel();
      await expect(p).rejects.toMatchObject({ code: 'closed' });
      expect(client.state).toBe('closed');
    });

    it('refuses to send before the hello', async () => {
      const kernel = new FakeKernel();
      const client = new CheckpointClient({ kernel });
      void client.connect();
      await expect(client.request('list')).rejects.toBeInstanceOf(CheckpointError);
      expect(kernel.last.sent).toHaveLength(0);
    });

    it('does not wait for the shell future of comm.send', async () => {
      // FakeComm.send returns a future whose done rejects; the request must still
      // resolve from the reply and no unhandled rejection may escape.
      const { client, comm } = await connected();
      const p = client.request('status');
      comm.receive({
        type: 'reply',
        request_id: comm.lastRequest().request_id,
        action: 'status',
        current_id: null
      });
      await expect(p).resolves.toMatchObject({ action: 'status' });
    });
  });

  describe('events and re-opening', () => {
    it('emits events', async () => {
      const { client, comm } = await connected();
      const events: string[] = [];
      client.event.connect((_, e) => events.push(e.event));
      comm.receive({ type: 'event', event: 'created', current_id: 'ckpt-a' });
      comm.receive({ type: 'event', event: 'deleted', checkpoint_id: 'ckpt-a', current_id: null });
      expect(events).toEqual(['created', 'deleted']);
    });

    it('re-opens on a new comm and keeps the old one until its pending reply arrives', async () => {
      const { client, kernel, comm: first } = await connected();
      const restore = client.request('restore', { checkpoint_id: 'ckpt-a' });
      const restoreId = first.lastRequest().request_id;
      const again = client.connect();
      expect(kernel.comms).toHaveLength(2);
      const second = kernel.last;
      expect(first.closed).toBe(false);
      second.receive({ type: 'hello', status: status({ current_id: 'ckpt-a' }) });
      await again;
      expect(client.state).toBe('ready');
      // Events on the old comm are not emitted twice.
      const events: string[] = [];
      client.event.connect((_, e) => events.push(e.event));
      first.receive({ type: 'event', event: 'restored', current_id: 'ckpt-a' });
      second.receive({ type: 'event', event: 'created', current_id: 'ckpt-a' });
      expect(events).toEqual(['created']);
      // The reply comes on the old comm, which then closes.
      first.receive({
        type: 'reply',
        request_id: restoreId,
        action: 'restore',
        current_id: 'ckpt-a'
      });
      await expect(restore).resolves.toMatchObject({ current_id: 'ckpt-a' });
      expect(first.closed).toBe(true);
      expect(second.closed).toBe(false);
      // New requests go on the new comm.
      void client.request('list');
      expect(second.sent).toHaveLength(1);
    });

    it('settles a restore whose comm JupyterLab dropped from the restored event', async () => {
      const { client, kernel, comm: first } = await connected();
      const restore = client.request('restore', { checkpoint_id: 'ckpt-a' });
      first.isDisposed = true; // JupyterLab disposed the comm on restart.
      const again = client.connect();
      kernel.last.receive({ type: 'hello', status: status({ current_id: 'ckpt-a' }) });
      await again;
      kernel.last.receive({
        type: 'event',
        event: 'restored',
        checkpoint_id: 'ckpt-a',
        current_id: 'ckpt-a'
      });
      await expect(restore).resolves.toMatchObject({ action: 'restore', current_id: 'ckpt-a' });
    });

    it('a restored event for another checkpoint does not settle the restore', async () => {
      const { client, kernel } = await connected();
      const restore = client.request('restore', { checkpoint_id: 'ckpt-a' });
      let settled = false;
      restore.finally(() => (settled = true)).catch(() => undefined);
      const again = client.connect();
      kernel.last.receive({ type: 'hello', status: status() });
      await again;
      kernel.last.receive({
        type: 'event',
        event: 'restored',
        checkpoint_id: 'ckpt-b',
        current_id: 'ckpt-b'
      });
      await flush();
      expect(settled).toBe(false);
      client.dispose();
    });

    it('dispose rejects pending requests and closes the comm', async () => {
      const { client, comm } = await connected();
      const p = client.request('checkpoint');
      client.dispose();
      await expect(p).rejects.toMatchObject({ code: 'closed' });
      expect(comm.closed).toBe(true);
      expect(client.isDisposed).toBe(true);
    });
  });
});

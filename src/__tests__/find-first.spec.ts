import type { BisectResult, Progress, Reply, Request } from '../../protocol/checkpoint-protocol';
import type { IRequestOptions, RequestParams } from '../comm';
import { CheckpointError } from '../comm';
import { CheckpointModel } from '../model';
import { FindFirstBar, FindFirstModel, findFirstModelOf } from '../widgets/find-first';
import { ckpt, flush } from './fakes';

const A = 'ckpt-20261126T100000Z-00000a';
const B = 'ckpt-20261126T110000Z-00000b';
const C = 'ckpt-20261126T120000Z-00000c';

/** A session's client that records the requests and lets the test answer them. */
class FakeClient {
  state = 'ready';
  sent: { action: string; params: RequestParams; options?: IRequestOptions }[] = [];
  private answer: ((reply: Reply) => void) | null = null;
  private fail: ((error: Error) => void) | null = null;

  request(action: 'bisect', params: RequestParams, options?: IRequestOptions): Promise<Reply> {
    this.sent.push({ action, params, options });
    return new Promise((resolve, reject) => {
      this.answer = resolve;
      this.fail = reject;
    });
  }
  progress(message: string): void {
    const p: Progress = {
      type: 'progress',
      request_id: 'r',
      action: 'bisect',
      stage: 'evaluating',
      message
    };
    this.sent[this.sent.length - 1].options?.onProgress?.(p);
  }
  reply(bisect: BisectResult): void {
    this.answer?.({ type: 'reply', request_id: 'r', action: 'bisect', current_id: C, bisect });
  }
  error(error: Error): void {
    this.fail?.(error);
  }
}

function target() {
  const model = new CheckpointModel();
  model.setCheckpoints(
    [
      ckpt(A, null, '2026-11-26T10:00:00Z', { label: 'x is 0' }),
      ckpt(B, A, '2026-11-26T11:00:00Z', { label: 'x is 2' }),
      ckpt(C, B, '2026-11-26T12:00:00Z', { label: 'x is 6' })
    ],
    C
  );
  return { model, client: new FakeClient() };
}

const found: BisectResult = {
  expression: 'x >= 3',
  range: [A, B, C],
  answer_id: C,
  before_id: B,
  probes: [
    { checkpoint_id: B, outcome: 'error', error: "NameError: name 'y' is not defined", round: 1 },
    { checkpoint_id: C, outcome: 'true', round: 1 }
  ],
  forks: 2,
  rounds: 1
};

describe('FindFirstModel', () => {
  it('asks the supervisor for a bisect, follows its progress and selects the answer', async () => {
    const t = target();
    const search = new FindFirstModel(t);
    let changes = 0;
    search.changed.connect(() => changes++);
    const done = search.find('  x >= 3 ', 2);
    expect(t.client.sent[0].action).toBe('bisect');
    expect(t.client.sent[0].params).toEqual({ expression: 'x >= 3', parallel: 2 });
    expect(search.state).toBe('searching');
    t.client.progress(`${C}: true`);
    expect(search.progress).toEqual([`${C}: true`]);
    expect(search.summary()).toBe('Searching in forks… 1 checkpoint evaluated');
    t.client.reply(found);
    await expect(done).resolves.toBe(found);
    expect(search.state).toBe('done');
    expect(t.model.selectedId).toBe(C);
    expect(search.summary()).toBe(
      'First true at "x is 6"; before it: "x is 2" (2 forks, 1 rounds) ' +
        '(1 raised or could not be evaluated: counted as not true).'
    );
    expect(changes).toBeGreaterThanOrEqual(3);
  });

  it('says when the expression is true nowhere, and selects nothing', async () => {
    const t = target();
    t.model.select(A);
    const search = new FindFirstModel(t);
    const done = search.find('x > 1000');
    t.client.reply({
      ...found,
      expression: 'x > 1000',
      answer_id: null,
      before_id: null,
      probes: []
    });
    await done;
    expect(t.model.selectedId).toBe(A);
    expect(search.summary()).toBe(
      'x > 1000 is true at none of the 3 checkpoints (2 forks, 1 rounds).'
    );
  });

  it('refuses an empty expression or a closed channel without sending anything', async () => {
    const t = target();
    const search = new FindFirstModel(t);
    await expect(search.find('   ')).rejects.toMatchObject({ code: 'invalid_request' });
    t.client.state = 'connecting';
    await expect(search.find('x')).rejects.toMatchObject({ code: 'closed' });
    expect(t.client.sent).toEqual([]);
    expect(search.state).toBe('failed');
    expect(search.summary()).toBe('The checkpoint channel to the kernel is not open.');
  });

  it("keeps the supervisor's error (forks need CRIU) and leaves the selection", async () => {
    const t = target();
    t.model.select(A);
    const search = new FindFirstModel(t);
    const done = search.find('x > 1');
    t.client.error(
      new CheckpointError('engine_unavailable', 'forks need the criu engine.', 'bisect')
    );
    await expect(done).rejects.toMatchObject({ code: 'engine_unavailable' });
    expect(search.summary()).toBe('forks need the criu engine.');
    expect(t.model.selectedId).toBe(A);
  });

  it('one search per session, shared by the command and the timeline', () => {
    const t = target();
    expect(findFirstModelOf(t)).toBe(findFirstModelOf(t));
    expect(findFirstModelOf(t)).not.toBe(findFirstModelOf(target()));
  });
});

describe('FindFirstBar', () => {
  it('submits the typed expression and draws the outcome', async () => {
    const t = target();
    const search = new FindFirstModel(t);
    const bar = new FindFirstBar();
    document.body.appendChild(bar.node);
    bar.setModel(search);
    const input = bar.node.querySelector('input')!;
    const button = bar.node.querySelector('button')!;
    input.value = 'x >= 3';
    bar.node.dispatchEvent(new Event('submit', { cancelable: true }));
    expect((t.client.sent[0].params as Request).expression).toBe('x >= 3');
    expect(button.disabled).toBe(true);
    t.client.reply(found);
    await flush();
    expect(button.disabled).toBe(false);
    expect(bar.node.textContent).toContain('First true at "x is 6"');
    bar.dispose();
    bar.node.remove();
  });
});

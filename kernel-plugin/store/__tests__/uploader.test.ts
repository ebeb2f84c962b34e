// The background uploader: images go one at a time in order; a failure keeps the image queued,
// says why, and is retried after a delay (before the images after it); listeners hear each state.

import type { UploadState } from '../../../protocol/checkpoint-protocol';
import { Uploader } from '../uploader';

describe('Uploader', () => {
  it('uploads in order, retries a failure before the next image, and reports each state', async () => {
    const sent: string[] = [];
    let failures = 2;
    const uploader = new Uploader(
      async (id, progress) => {
        progress(0.5);
        if (id === 'first' && failures-- > 0) {
          throw new Error('connect ECONNREFUSED 127.0.0.1:9');
        }
        sent.push(id);
      },
      { firstRetryMs: 5, maxRetryMs: 20 }
    );
    const heard: Array<[string, UploadState]> = [];
    uploader.onChange((id, state) => heard.push([id, state]));
    uploader.enqueue('first');
    uploader.enqueue('second');
    uploader.enqueue('first'); // Already queued: once.
    await uploader.idle();
    expect(sent).toEqual(['first', 'second']);
    expect(uploader.stateOf('first')).toEqual({ state: 'uploaded' });
    const failed = heard.filter(([id, s]) => id === 'first' && s.state === 'local' && s.error);
    expect(failed).toHaveLength(2);
    expect(failed[0][1].error).toMatch(/ECONNREFUSED/);
    expect(heard).toContainEqual(['second', { state: 'uploading', percent: 50 }]);
    expect(uploader.summary()).toEqual({ uploading: null, percent: null, waiting: 0 });
  });

  it('says what waits and why while the store cannot be reached', async () => {
    let reachable = false;
    const uploader = new Uploader(
      async () => {
        if (!reachable) {
          throw new Error('Cannot upload: network down');
        }
      },
      { firstRetryMs: 5, maxRetryMs: 10 }
    );
    uploader.enqueue('one');
    await new Promise(resolve => setTimeout(resolve, 30));
    expect(uploader.summary()).toMatchObject({ waiting: 1, error: 'Cannot upload: network down' });
    expect(uploader.stateOf('one')?.state).toBe('local');
    reachable = true;
    await uploader.idle();
    expect(uploader.stateOf('one')).toEqual({ state: 'uploaded' });
  });

  it('forgets a cancelled image', async () => {
    const sent: string[] = [];
    let release: () => void = () => undefined;
    const gate = new Promise<void>(resolve => (release = resolve));
    const uploader = new Uploader(
      async id => {
        await gate;
        sent.push(id);
      },
      { firstRetryMs: 5, maxRetryMs: 10 }
    );
    uploader.enqueue('a');
    uploader.enqueue('b');
    uploader.cancel('b');
    release();
    await uploader.idle();
    expect(sent).toEqual(['a']);
    expect(uploader.stateOf('b')).toBeUndefined();
  });
});

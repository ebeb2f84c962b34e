import type { Checkpoint } from '../../../protocol/checkpoint-protocol';
import { bisectRange, searchFirstTrue } from '../bisect-flow';
import { RequestError } from '../request-errors';

/** Runs the search over `truths`, recording every round's indexes. */
async function search(truths: boolean[], parallel: number) {
  const rounds: number[][] = [];
  const outcome = await searchFirstTrue(truths.length, parallel, async indexes => {
    rounds.push(indexes);
    return indexes.map(i => truths[i]);
  });
  return { ...outcome, asked: rounds.flat(), rounds: rounds };
}

/** false up to `first`, true from there on. */
const stepAt = (length: number, first: number) => Array.from({ length }, (_, i) => i >= first);

describe('the search for the first true checkpoint', () => {
  it('finds every boundary of 16 checkpoints, with one fork at a time, in log2 steps', async () => {
    for (let first = 0; first <= 16; first++) {
      const got = await search(stepAt(16, first), 1);
      expect(got.first).toBe(first < 16 ? first : null);
      expect(got.before).toBe(first > 0 && first < 16 ? first - 1 : null);
      expect(got.asked.length).toBeLessThanOrEqual(5);
      expect(new Set(got.asked).size).toBe(got.asked.length); // never asks twice
    }
  });

  it('with N forks splits the interval into N+1 parts each round', async () => {
    const got = await search(stepAt(16, 11), 2);
    expect(got.rounds[0]).toEqual([5, 10]);
    for (const round of got.rounds) {
      expect(round.length).toBeLessThanOrEqual(2);
    }
    expect(got.first).toBe(11);
    expect(got.before).toBe(10);
    // 3 parts a round: fewer rounds than halving.
    expect(got.rounds.length).toBeLessThan((await search(stepAt(16, 11), 1)).rounds.length);
  });

  it('asks each checkpoint once when there are as many forks as checkpoints', async () => {
    const got = await search(stepAt(5, 3), 8);
    expect(got.rounds).toEqual([[0, 1, 2, 3, 4]]);
    expect(got.first).toBe(3);
  });

  it('answers with a true checkpoint right after a false one when truth comes and goes', async () => {
    const truths = [false, true, false, false, true, true, false, true];
    const got = await search(truths, 1);
    expect(got.first).not.toBeNull();
    expect(truths[got.first!]).toBe(true);
    expect(got.before === null || truths[got.before] === false).toBe(true);
  });

  it('an empty range asks nothing', async () => {
    const got = await search([], 2);
    expect(got.first).toBeNull();
    expect(got.asked).toEqual([]);
  });
});

function checkpoint(id: string, parent: string | null): Checkpoint {
  return { id, parent_id: parent } as Checkpoint;
}

describe('the range of a bisect', () => {
  const a = 'ckpt-20261201T000001Z-00000a';
  const b = 'ckpt-20261201T000002Z-00000b';
  const c = 'ckpt-20261201T000003Z-00000c';
  const side = 'ckpt-20261201T000004Z-00000d';
  const store = [checkpoint(a, null), checkpoint(b, a), checkpoint(c, b), checkpoint(side, a)];

  it('is the chain from the root to the given checkpoint, oldest first', () => {
    expect(bisectRange(store, c).map(x => x.id)).toEqual([a, b, c]);
    expect(bisectRange(store, side).map(x => x.id)).toEqual([a, side]);
    expect(bisectRange(store, c, b).map(x => x.id)).toEqual([b, c]);
  });

  it('refuses a start that is not an ancestor, and unknown ids', () => {
    expect(() => bisectRange(store, c, side)).toThrow(/not an ancestor/);
    try {
      bisectRange(store, 'ckpt-20000101T000000Z-000000');
    } catch (error) {
      expect(error).toBeInstanceOf(RequestError);
      expect((error as RequestError).code).toBe('unknown_checkpoint');
    }
    expect.assertions(3);
  });
});

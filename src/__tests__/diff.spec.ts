import { diffVariables, isEmptyDiff } from '../diff';

const summary = (
  variables: { name: string; type: string; size_bytes?: number; shape?: number[] }[]
) => ({
  execution_count: 1,
  variables
});

describe('diffVariables', () => {
  it('lists added, removed and changed variables by type, size and shape', () => {
    const diff = diffVariables(
      summary([
        { name: 'x', type: 'int', size_bytes: 28 },
        { name: 'arr', type: 'numpy.ndarray', size_bytes: 80, shape: [10] },
        { name: 'gone', type: 'str', size_bytes: 50 }
      ]),
      summary([
        { name: 'x', type: 'int', size_bytes: 28 },
        { name: 'arr', type: 'numpy.ndarray', size_bytes: 160, shape: [20] },
        { name: 'df', type: 'pandas.DataFrame', size_bytes: 1000 }
      ])
    )!;
    expect(diff.added.map(v => v.name)).toEqual(['df']);
    expect(diff.removed.map(v => v.name)).toEqual(['gone']);
    expect(diff.changed.map(c => [c.name, c.what])).toEqual([['arr', ['size', 'shape']]]);
    expect(isEmptyDiff(diff)).toBe(false);
    expect(diff.partial).toBe(false);
  });

  it('is null without a summary and empty for the same variables', () => {
    expect(diffVariables(null, summary([]))).toBeNull();
    const same = summary([{ name: 'x', type: 'int', size_bytes: 28 }]);
    expect(isEmptyDiff(diffVariables(same, same)!)).toBe(true);
  });
});

import { layoutGraph } from '../graph';
import { ckpt } from './fakes';

const at = (minute: number) => new Date(Date.UTC(2026, 10, 26, 10, minute)).toISOString();

describe('layoutGraph', () => {
  it('draws a straight chain in one lane, newest first', () => {
    const chain = Array.from({ length: 20 }, (_, i) =>
      ckpt(`c${i}`, i === 0 ? null : `c${i - 1}`, at(i))
    );
    const graph = layoutGraph(chain);
    expect(graph.lanes).toBe(1);
    expect(graph.rows.map(r => r.checkpoint.id)).toEqual(chain.map(c => c.id).reverse());
    expect(graph.rows.every(r => r.lane === 0 && r.through.length === 0)).toBe(true);
    expect(graph.rows[0].joins).toEqual([]); // the tip
    expect(graph.rows[19].down).toBe(false); // the root
    expect(graph.rows[5].depth).toBe(14);
  });

  it('gives a branch its own lane that joins its parent', () => {
    // a <- b <- c, and a branch from b: d <- e (restore b, checkpoint twice).
    const list = [
      ckpt('a', null, at(0)),
      ckpt('b', 'a', at(1)),
      ckpt('c', 'b', at(2)),
      ckpt('d', 'b', at(3)),
      ckpt('e', 'd', at(4))
    ];
    const graph = layoutGraph(list);
    const row = (id: string) => graph.rows[graph.index.get(id)!];
    expect(graph.rows.map(r => r.checkpoint.id)).toEqual(['e', 'd', 'c', 'b', 'a']);
    expect(graph.lanes).toBe(2);
    expect(row('e').lane).toBe(0);
    expect(row('d').lane).toBe(0);
    expect(row('c').lane).toBe(1);
    expect(row('c').through).toEqual([0]); // d's line to b passes c's row
    expect(row('b').joins).toEqual([0, 1]); // both branches end at b
    expect(row('b').children).toBe(2);
    expect(row('a').lane).toBe(0);
    expect(row('a').through).toEqual([]);
  });

  it('puts unrelated roots in the first free lane and links through a replaced parent', () => {
    const list = [ckpt('a', null, at(0)), ckpt('x', null, at(1)), ckpt('b', 'gone', at(2))];
    const graph = layoutGraph(list);
    expect(graph.lanes).toBe(1);
    const filtered = layoutGraph([list[0], list[2]], c => (c.id === 'b' ? 'a' : null));
    expect(filtered.rows[0].down).toBe(true);
    expect(filtered.rows[1].joins).toEqual([0]);
  });
});

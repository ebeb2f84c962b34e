import { copyPath, fileNamePart, originOf, visibleFromOrigin } from '../new-notebook';
import { ckpt } from './fakes';

const A = 'ckpt-20261126T100000Z-00000a';
const B = 'ckpt-20261126T110000Z-00000b';
const C = 'ckpt-20261126T120000Z-00000c';
const D = 'ckpt-20261126T130000Z-00000d';

describe('Open in a new notebook', () => {
  it("names the copy after the notebook and the checkpoint's label, made safe", () => {
    expect(fileNamePart('x is 1', A)).toBe('x-is-1');
    expect(fileNamePart('../../etc/passwd', A)).toBe('etc-passwd');
    expect(fileNamePart('  Ünïcödé: model/v2 [3]  ', A)).toBe('Unicode-model-v2-3');
    expect(fileNamePart('///', A)).toBe(A);
    expect(fileNamePart(null, A)).toBe(A);
    expect(fileNamePart('a'.repeat(100), A)).toHaveLength(40);
  });

  it('puts the copy beside the notebook, with a number when the name is taken', async () => {
    const taken = new Set(['work/analysis-from-x-is-1.ipynb', 'work/analysis-from-x-is-1-2.ipynb']);
    const exists = async (p: string) => taken.has(p);
    const c = ckpt(A, null, '2026-11-26T10:00:00Z', { label: 'x is 1' });
    expect(await copyPath('work/analysis.ipynb', c, exists)).toBe(
      'work/analysis-from-x-is-1-3.ipynb'
    );
    expect(await copyPath('Untitled.ipynb', c, exists)).toBe('Untitled-from-x-is-1.ipynb');
  });

  it('reads the origin from the metadata, and nothing from metadata without one', () => {
    expect(originOf({ notebook_id: 'n', origin: { notebook_id: 'o', checkpoint_id: A } })).toEqual({
      notebook_id: 'o',
      checkpoint_id: A
    });
    expect(originOf({ notebook_id: 'n' })).toBeNull();
    expect(originOf(undefined)).toBeNull();
    expect(originOf({ origin: { checkpoint_id: 3 } })).toBeNull();
  });

  it("shows the origin and its ancestors, and the copy's own checkpoints, not the original's later ones", () => {
    // The original: A -> B -> C (C taken after B was opened in a new notebook); the copy: B -> D.
    const list = [
      ckpt(A, null, '2026-11-26T10:00:00Z', { notebook_id: 'orig' }),
      ckpt(B, A, '2026-11-26T11:00:00Z', { notebook_id: 'orig' }),
      ckpt(C, B, '2026-11-26T12:00:00Z', { notebook_id: 'orig' }),
      ckpt(D, B, '2026-11-26T13:00:00Z', { notebook_id: 'copy' })
    ];
    const shown = visibleFromOrigin(list, 'copy', { notebook_id: 'orig', checkpoint_id: B });
    expect(shown.map(c => c.id)).toEqual([A, B, D]);
  });
});

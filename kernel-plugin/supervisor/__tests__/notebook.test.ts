import type { Checkpoint } from '../../../protocol/checkpoint-protocol';
import { NotebookIdentity } from '../notebook';

const SAVED = '2026-12-03T09:59:00.123456Z';

function image(id: string, fields: Partial<Checkpoint>): Checkpoint {
  return {
    format: 'kernel-checkpoint/1',
    id,
    parent_id: null,
    label: null,
    created: '2026-12-03T10:00:00Z',
    engine: { name: 'criu', version: '4.2' },
    duration_ms: 1,
    image_bytes: 1,
    kernel: { name: 'python3', display_name: 'Python 3', language: 'python' },
    notebook_path: null,
    state: null,
    ...fields
  };
}

describe('NotebookIdentity', () => {
  it("records the file's save time a client sent, and the magics' checkpoints get it too", () => {
    const notebook = new NotebookIdentity('a.ipynb');
    expect(notebook.fields({})).toEqual({ notebook_path: 'a.ipynb' });
    notebook.learn({ notebook_id: 'nb-1', notebook_path: 'a.ipynb', notebook_saved: SAVED });
    expect(notebook.fields({})).toEqual({
      notebook_path: 'a.ipynb',
      notebook_id: 'nb-1',
      notebook_saved: SAVED
    });
  });

  it('finds the id of a notebook closed without saving it by its path and save time', () => {
    const images = [
      image('ckpt-old', { notebook_id: 'nb-old', notebook_path: 'a.ipynb', notebook_saved: SAVED }),
      image('ckpt-new', { notebook_id: 'nb-1', notebook_path: 'a.ipynb', notebook_saved: SAVED }),
      image('ckpt-other', { notebook_id: 'nb-2', notebook_path: 'b.ipynb', notebook_saved: SAVED })
    ];
    // A fresh kernel: it knows no id.
    const notebook = new NotebookIdentity('a.ipynb');
    const asked = { notebook_id: null, notebook_path: 'a.ipynb', notebook_saved: SAVED };
    expect(notebook.idFor(asked, images)).toBe('nb-1');
    expect(notebook.owns(images[1], { ...asked, notebook_id: 'nb-1' })).toBe(true);
    // A new notebook that got the old name: its file was saved at another time.
    expect(notebook.idFor({ ...asked, notebook_saved: '2026-12-03T11:00:00Z' }, images)).toBeNull();
    expect(notebook.idFor({ ...asked, notebook_saved: null }, images)).toBeNull();
    expect(notebook.idFor({ ...asked, notebook_path: 'c.ipynb' }, images)).toBeNull();
    // A client that has an id needs none.
    expect(notebook.idFor({ ...asked, notebook_id: 'nb-9' }, images)).toBeNull();
  });

  it("gives the id this kernel's clients sent for the same notebook, not for another", () => {
    const notebook = new NotebookIdentity('a.ipynb');
    notebook.learn({ notebook_id: 'nb-1', notebook_path: 'a.ipynb' });
    expect(notebook.idFor({ notebook_path: 'a.ipynb' }, [])).toBe('nb-1');
    expect(notebook.idFor({ notebook_path: 'b.ipynb' }, [])).toBeNull();
  });
});

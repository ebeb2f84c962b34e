/** Running cells in Galata tests through the notebook's own model and its Run command. */
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';

/**
 * Appends a code cell with `source` to the notebook at `path` (made the current one), or to the
 * current notebook, runs it (one round trip: Galata's typing helpers take seconds per cell), and
 * returns its index and its text output (streams, errors, text/plain results).
 */
export async function runCell(
  page: IJupyterLabPageFixture,
  source: string,
  path: string | null = null
): Promise<{ index: number; text: string }> {
  return page.evaluate(
    async ({ source, path }) => {
      const app = (window as any).jupyterapp;
      let panel = app.shell.currentWidget;
      if (path !== null) {
        panel = Array.from(app.shell.widgets('main') as Iterable<any>).find(
          (w: any) => w.context?.path === path
        );
        if (!panel) {
          throw new Error(`${path} is not open`);
        }
        app.shell.activateById(panel.id);
        await panel.sessionContext.ready;
      }
      const notebook = panel.content;
      const model = notebook.model;
      model.sharedModel.insertCell(model.cells.length, { cell_type: 'code', source });
      const index = model.cells.length - 1;
      notebook.activeCellIndex = index;
      notebook.deselectAll();
      await app.commands.execute('notebook:run-cell');
      const parts: string[] = [];
      for (const output of model.cells.get(index).outputs.toJSON()) {
        const join = (t: unknown) => (Array.isArray(t) ? t.join('') : String(t ?? ''));
        if (output.output_type === 'stream') {
          parts.push(join(output.text));
        } else if (output.output_type === 'error') {
          parts.push(`${output.ename}: ${output.evalue}`);
        } else if (output.data && 'text/plain' in output.data) {
          parts.push(join(output.data['text/plain']));
        }
      }
      return { index, text: parts.join('').trim() };
    },
    { source, path }
  );
}

/**
 * "Find the first checkpoint where…" in the timeline, against a real JupyterLab, a real kernel
 * supervisor and real CRIU forks: the answer is selected, and the notebook's kernel keeps its own
 * state (the expression is evaluated only in forks).
 */
import { expect, test } from '@jupyterlab/galata';
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';

const KERNEL = 'python3-checkpoint';
/** A search starts a few forks, ~1-2 s each on a loaded machine. */
const SEARCH = 90_000;
const SLOW = 30_000;

test.use({ autoGoto: true, viewport: { width: 1400, height: 900 } });

const panel = (page: IJupyterLabPageFixture) => page.locator('#jp-kernel-checkpoint-timeline');
const node = (page: IJupyterLabPageFixture, id: string) =>
  panel(page).locator(`.jp-KernelCheckpoint-node[data-checkpoint-id="${id}"]`);

/** Runs `source` as a new cell of the current notebook; returns its stdout. */
async function cell(page: IJupyterLabPageFixture, source: string): Promise<string> {
  return page.evaluate(async (src: string) => {
    const app = (window as any).jupyterapp;
    const notebook = app.shell.currentWidget.content;
    const model = notebook.model;
    model.sharedModel.insertCell(model.cells.length, { cell_type: 'code', source: src });
    notebook.activeCellIndex = model.cells.length - 1;
    notebook.deselectAll();
    await app.commands.execute('notebook:run-cell');
    return model.cells
      .get(model.cells.length - 1)
      .outputs.toJSON()
      .filter((o: any) => o.output_type === 'stream' && o.name === 'stdout')
      .map((o: any) => (Array.isArray(o.text) ? o.text.join('') : String(o.text)))
      .join('')
      .trim();
  }, source);
}

test('finds the first checkpoint where an expression is true and selects it', async ({ page }) => {
  test.setTimeout(SEARCH + 4 * SLOW);
  await page.notebook.createNew('find-first.ipynb', { kernel: KERNEL });
  await page.menu.clickMenuItem('Kernel>Show Checkpoint Timeline');
  await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
    timeout: SLOW
  });
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) {
    // The magic prints the new checkpoint's id.
    const out = await cell(page, `x = ${i}\n%checkpoint -m "x is ${i}"`);
    const id = /Checkpoint (ckpt-\S+)/.exec(out)?.[1];
    expect(id, out).toBeTruthy();
    ids.push(id!);
    await expect(node(page, id!)).toHaveCount(1, { timeout: SLOW });
  }
  await cell(page, 'x = 100');

  const input = panel(page).locator('.jp-KernelCheckpoint-findFirstInput');
  await input.fill('x >= 2');
  await input.press('Enter');
  await expect(node(page, ids[2])).toHaveAttribute('aria-selected', 'true', { timeout: SEARCH });
  await expect(panel(page).locator('.jp-KernelCheckpoint-findFirstStatus')).toContainText(
    'First true at "x is 2"; before it: "x is 1"'
  );
  // Evaluated in forks only: the notebook's kernel still has its own x.
  expect(await cell(page, 'print(x)')).toBe('100');
});

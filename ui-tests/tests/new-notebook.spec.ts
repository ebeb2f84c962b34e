/**
 * "Open in a new notebook" against a real JupyterLab, real kernels under the supervisor and real
 * CRIU: a copy of the notebook whose kernel is restored from an older checkpoint, beside the
 * original, both usable, each with its own state; the copy's timeline starts at its origin.
 */
import { expect, test } from '@jupyterlab/galata';
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';
import { runCell } from './cells';

const KERNEL = 'python3-checkpoint';
/** A checkpoint, a kernel start or a restore of a small kernel; allow for a slow machine. */
const SLOW = 60_000;

test.use({ autoGoto: true, viewport: { width: 1400, height: 900 } });

const panel = (page: IJupyterLabPageFixture) => page.locator('#jp-kernel-checkpoint-timeline');
const nodes = (page: IJupyterLabPageFixture) => panel(page).locator('.jp-KernelCheckpoint-node');
const node = (page: IJupyterLabPageFixture, id: string) =>
  panel(page).locator(`.jp-KernelCheckpoint-node[data-checkpoint-id="${id}"]`);

/** Runs `source` in the notebook at `path` and returns its text output. */
async function runIn(page: IJupyterLabPageFixture, path: string, source: string): Promise<string> {
  return (await runCell(page, source, path)).text;
}

test('open a checkpoint in a new notebook, beside the original', async ({ page, tmpPath }) => {
  test.setTimeout(240_000);
  const specs = await page.evaluate(async () => {
    const app = (window as any).jupyterapp;
    await app.serviceManager.kernelspecs.ready;
    return Object.keys(app.serviceManager.kernelspecs.specs?.kernelspecs ?? {});
  });
  expect(specs, `the kernelspec ${KERNEL} must be installed for the UI tests`).toContain(KERNEL);
  const original = `${tmpPath}/analysis.ipynb`;
  const copy = `${tmpPath}/analysis-from-x-is-1.ipynb`;
  await page.notebook.createNew('analysis.ipynb', { kernel: KERNEL });
  await page.menu.clickMenuItem('Kernel>Show Checkpoint Timeline');
  await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
    timeout: SLOW
  });
  await expect(panel(page).locator('.jp-KernelCheckpoint-notebook')).toHaveText('analysis.ipynb', {
    timeout: SLOW
  });

  expect(await runIn(page, original, 'x = 1\nprint(x)')).toBe('1');
  await page.evaluate(() =>
    (window as any).jupyterapp.commands.execute('kernel-checkpoint:checkpoint', { label: 'x is 1' })
  );
  await expect(nodes(page)).toHaveCount(1, { timeout: SLOW });
  const first = (await nodes(page).first().getAttribute('data-checkpoint-id'))!;
  expect(await runIn(page, original, 'x = 2\nprint(x)')).toBe('2');
  await page.evaluate(() =>
    (window as any).jupyterapp.commands.execute('kernel-checkpoint:checkpoint', { label: 'x is 2' })
  );
  await expect(nodes(page)).toHaveCount(2, { timeout: SLOW });

  // The node's context menu opens it in a new notebook.
  await node(page, first).click({ button: 'right' });
  await page.locator('.lm-Menu-item', { hasText: 'Open in a New Notebook' }).click();

  // The copy opens beside the original, its kernel restored from the first checkpoint.
  const copyTab = page.locator('.lm-TabBar-tab', { hasText: 'analysis-from-x-is-1.ipynb' });
  await expect(copyTab).toBeVisible({ timeout: SLOW });
  await expect(panel(page).locator('.jp-KernelCheckpoint-notebook')).toHaveText(
    'analysis-from-x-is-1.ipynb',
    { timeout: SLOW }
  );
  await expect(node(page, first)).toHaveClass(/jp-mod-current/, { timeout: SLOW });
  expect(await runIn(page, copy, 'print(x)')).toBe('1');
  expect(await runIn(page, original, 'print(x)')).toBe('2');
  // Both run cells, each in its own kernel.
  expect(await runIn(page, copy, 'x = 10\nprint(x * 2)')).toBe('20');
  expect(await runIn(page, original, 'print(x + 1)')).toBe('3');

  // The file exists, under its own identity that records where it came from.
  const saved = await page.evaluate(async (path: string) => {
    const app = (window as any).jupyterapp;
    const model = await app.serviceManager.contents.get(path);
    return {
      copy: model.content.metadata.kernel_checkpoint,
      kernel: model.content.metadata.kernelspec.name
    };
  }, copy);
  // (The original has unsaved cells: its id is in its open model, and in its checkpoints.)
  const originalMeta = await page.evaluate((path: string) => {
    const app = (window as any).jupyterapp;
    const panel = Array.from(app.shell.widgets('main') as Iterable<any>).find(
      (w: any) => w.context?.path === path
    ) as any;
    return panel.model.getMetadata('kernel_checkpoint');
  }, original);
  expect(saved.kernel).toBe(KERNEL);
  expect(saved.copy.notebook_id).toMatch(/^[0-9a-f-]{36}$/);
  expect(saved.copy.notebook_id).not.toBe(originalMeta.notebook_id);
  expect(saved.copy.origin).toMatchObject({
    notebook_id: originalMeta.notebook_id,
    checkpoint_id: first
  });

  // The copy's timeline: its origin as its root, not the original's later checkpoint; its own
  // checkpoints are children of the origin.
  await runIn(page, copy, 'print(x)');
  await expect(nodes(page)).toHaveCount(1);
  await expect(node(page, first).locator('.jp-KernelCheckpoint-badge.jp-mod-origin')).toHaveText(
    'origin'
  );
  await page.evaluate(() =>
    (window as any).jupyterapp.commands.execute('kernel-checkpoint:checkpoint', {
      label: 'in the copy'
    })
  );
  await expect(nodes(page)).toHaveCount(2, { timeout: SLOW });
  const own = nodes(page).filter({ hasText: 'in the copy' });
  await expect(own).toHaveAttribute('aria-level', '2');
  await expect(own).toHaveClass(/jp-mod-current/);
});

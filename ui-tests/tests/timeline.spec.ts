/**
 * The checkpoint timeline against a real JupyterLab, a real kernel supervisor and a
 * real engine (CRIU): the kernelspec 'python3-checkpoint' must be installed in the
 * test server's data folder.
 */
import { expect, test } from '@jupyterlab/galata';
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';
import * as fs from 'fs';
import * as path from 'path';

const KERNEL = 'python3-checkpoint';
/** Checkpoints and restores of a small kernel take seconds; allow for a slow machine. */
const SLOW = 120_000;

test.use({ autoGoto: true });
test.describe.configure({ mode: 'serial' });

const panel = (page: IJupyterLabPageFixture) => page.locator('#jp-kernel-checkpoint-timeline');
const nodes = (page: IJupyterLabPageFixture) => panel(page).locator('.jp-KernelCheckpoint-node');
const toolbarButton = (page: IJupyterLabPageFixture) =>
  page.locator('.jp-NotebookPanel-toolbar .jp-KernelCheckpoint-toolbarButton button');

async function requireCheckpointKernel(page: IJupyterLabPageFixture): Promise<void> {
  const specs = await page.evaluate(async () => {
    const app = (window as any).jupyterapp;
    await app.serviceManager.kernelspecs.ready;
    return Object.keys(app.serviceManager.kernelspecs.specs?.kernelspecs ?? {});
  });
  expect(specs, `the kernelspec ${KERNEL} must be installed for the UI tests`).toContain(KERNEL);
}

async function newNotebook(page: IJupyterLabPageFixture, name: string): Promise<void> {
  await requireCheckpointKernel(page);
  await page.notebook.createNew(name, { kernel: KERNEL });
  await page.menu.clickMenuItem('Kernel>Show Checkpoint Timeline');
  await expect(panel(page)).toBeVisible();
  // The supervisor said hello: the panel offers the checkpoint action.
  await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
    timeout: 60_000
  });
}

async function run(page: IJupyterLabPageFixture, source: string): Promise<string> {
  await page.notebook.addCell('code', source);
  const index = (await page.notebook.getCellCount()) - 1;
  await page.notebook.runCell(index);
  return ((await page.notebook.getCellTextOutput(index)) ?? []).join('').trim();
}

async function idle(page: IJupyterLabPageFixture): Promise<void> {
  await expect(toolbarButton(page)).toHaveAttribute('aria-busy', 'false', { timeout: SLOW });
}

const node = (page: IJupyterLabPageFixture, id: string) =>
  panel(page).locator(`.jp-KernelCheckpoint-node[data-checkpoint-id="${id}"]`);
const item = (page: IJupyterLabPageFixture, id: string) =>
  panel(page).locator(`li.jp-KernelCheckpoint-item[data-checkpoint-id="${id}"]`);

/**
 * Press the toolbar button; return the id of the new node, which becomes the current one.
 * The store may hold images of earlier runs: count relative to what was there.
 */
async function checkpointWithButton(page: IJupyterLabPageFixture): Promise<string> {
  const before = await nodes(page).count();
  await toolbarButton(page).click();
  await expect(nodes(page)).toHaveCount(before + 1, { timeout: SLOW });
  await idle(page);
  const current = panel(page).locator('.jp-KernelCheckpoint-node.jp-mod-current');
  await expect(current).toHaveCount(1);
  return (await current.getAttribute('data-checkpoint-id'))!;
}

async function restoreFromPanel(page: IJupyterLabPageFixture, id: string) {
  await node(page, id).locator('.jp-KernelCheckpoint-restore').click();
  await page.getByRole('button', { name: 'Confirm restore' }).click();
  await idle(page);
  await expect(node(page, id)).toHaveClass(/jp-mod-current/, { timeout: SLOW });
}

test.describe('kernel checkpoint timeline', () => {
  test('checkpoint, restore an older node, and branch', async ({ page }) => {
    test.setTimeout(6 * SLOW);
    await newNotebook(page, 'timeline.ipynb');
    await page.notebook.setCell(0, 'code', 'x = 1\nprint("x =", x)');
    await page.notebook.runCell(0);

    // The toolbar button: a node appears and is the current one.
    const first = await checkpointWithButton(page);
    await expect(node(page, first).locator('.jp-KernelCheckpoint-count')).toHaveText(/^\[\d+\]$/);

    // Change the variable and checkpoint again: a child of the first node.
    expect(await run(page, 'x = 2\nprint("x =", x)')).toBe('x = 2');
    const second = await checkpointWithButton(page);
    await expect(item(page, first).locator(`li[data-checkpoint-id="${second}"]`)).toHaveCount(1);

    // Restore the first node from the panel: the old value is back.
    await restoreFromPanel(page, first);
    expect(await run(page, 'print("x =", x)')).toBe('x = 1');

    // The next checkpoint branches off the first node.
    const third = await checkpointWithButton(page);
    await expect(item(page, first)).toHaveClass(/jp-mod-branch/);
    const children = item(page, first).locator(':scope > .jp-KernelCheckpoint-children > li');
    await expect(children).toHaveCount(2);
    await expect(children.nth(0)).toHaveAttribute('data-checkpoint-id', second);
    await expect(children.nth(1)).toHaveAttribute('data-checkpoint-id', third);
    await expect(node(page, third)).toHaveClass(/jp-mod-current/);
    await expect(panel(page).locator('.jp-KernelCheckpoint-node.jp-mod-current')).toHaveCount(1);
  });

  test('a checkpoint made by the %checkpoint magic appears live', async ({ page }) => {
    test.setTimeout(3 * SLOW);
    await newNotebook(page, 'magic.ipynb');
    await page.notebook.setCell(0, 'code', 'z = 3');
    await page.notebook.runCell(0);
    const before = await nodes(page).count();
    await page.notebook.addCell('code', '%checkpoint -m from-magic');
    await page.notebook.runCell(1);
    await expect(nodes(page)).toHaveCount(before + 1, { timeout: SLOW });
    await expect(
      panel(page).locator('.jp-KernelCheckpoint-node.jp-mod-current .jp-KernelCheckpoint-label')
    ).toContainText('from-magic');
  });

  test('restore a session from a saved image after the kernel is replaced', async ({ page }) => {
    test.setTimeout(4 * SLOW);
    await newNotebook(page, 'saved-session.ipynb');
    await page.notebook.setCell(0, 'code', 'y = 42\nprint("y =", y)');
    await page.notebook.runCell(0);
    const saved = await checkpointWithButton(page);

    // Shut the kernel down and start a new one.
    await page.evaluate(async (kernel: string) => {
      const app = (window as any).jupyterapp;
      const widget = app.shell.currentWidget;
      await widget.sessionContext.shutdown();
      await widget.sessionContext.changeKernel({ name: kernel });
    }, KERNEL);
    await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
      timeout: 60_000
    });
    expect(await run(page, 'print("y" in globals())')).toBe('False');

    // A fresh kernel: the panel offers the image saved for this notebook.
    await expect(panel(page).locator('.jp-KernelCheckpoint-offer')).toContainText(
      'Restore the session from a saved image'
    );
    await expect(node(page, saved)).toBeVisible({ timeout: SLOW });
    await expect(panel(page).locator('.jp-KernelCheckpoint-node.jp-mod-current')).toHaveCount(0);
    await restoreFromPanel(page, saved);
    expect(await run(page, 'print("y =", y)')).toBe('y = 42');
  });

  test('a failing restore shows a notification with the reason', async ({ page }) => {
    test.setTimeout(3 * SLOW);
    await newNotebook(page, 'failing.ipynb');
    await page.notebook.setCell(0, 'code', 'w = 7');
    await page.notebook.runCell(0);
    const id = await checkpointWithButton(page);

    // Damage the image behind the supervisor's back.
    const store = (await panel(page).locator('.jp-KernelCheckpoint-store').textContent())?.trim();
    expect(store, 'the supervisor reports its image store').toBeTruthy();
    const dir = path.join(store!, id);
    expect(fs.existsSync(dir), `image folder ${dir}`).toBe(true);
    let damaged = 0;
    const walk = (d: string) => {
      for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, entry.name);
        if (entry.isDirectory()) {
          walk(p);
        } else if (entry.name !== 'manifest.json') {
          fs.chmodSync(p, 0o600);
          fs.writeFileSync(p, 'damaged');
          damaged++;
        }
      }
    };
    walk(dir);
    expect(damaged).toBeGreaterThan(0);

    await node(page, id).locator('.jp-KernelCheckpoint-restore').click();
    await page.getByRole('button', { name: 'Confirm restore' }).click();
    const toast = page.locator('.Toastify__toast').filter({ hasText: 'Restore failed:' });
    await expect(toast).toBeVisible({ timeout: SLOW });
    // The kernel that ran before the failed restore is still there, unchanged.
    expect(await run(page, 'print(w)')).toBe('7');
  });

  test('a kernel that is not checkpointable gets an explanation and a switch', async ({ page }) => {
    test.setTimeout(2 * SLOW);
    await requireCheckpointKernel(page);
    await page.notebook.createNew('plain.ipynb', { kernel: 'python3' });
    await page.menu.clickMenuItem('Kernel>Show Checkpoint Timeline');
    const box = panel(page).locator('.jp-KernelCheckpoint-unavailable');
    await expect(box).toContainText('cannot be checkpointed', { timeout: 60_000 });
    await box.getByRole('button', { name: /Switch this notebook to the kernel/ }).click();
    await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
      timeout: 60_000
    });
    const kernelName = await page.evaluate(
      () => (window as any).jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.name
    );
    expect(kernelName).toBe(KERNEL);
  });

  for (const theme of ['light', 'dark'] as const) {
    test(`timeline panel in the ${theme} theme`, async ({ page }) => {
      test.setTimeout(4 * SLOW);
      if (theme === 'dark') {
        await page.theme.setDarkTheme();
      } else {
        await page.theme.setLightTheme();
      }
      await newNotebook(page, `theme-${theme}.ipynb`);
      await page.notebook.setCell(0, 'code', 'a = list(range(10))');
      await page.notebook.runCell(0);
      for (const label of ['first', 'second']) {
        await page.evaluate(
          (l: string) =>
            (window as any).jupyterapp.commands.execute('kernel-checkpoint:checkpoint', {
              label: l
            }),
          label
        );
        await idle(page);
      }
      const firstId = await panel(page)
        .locator('.jp-KernelCheckpoint-node', { hasText: 'first' })
        .last()
        .getAttribute('data-checkpoint-id');
      await restoreFromPanel(page, firstId!);
      await page.evaluate(() =>
        (window as any).jupyterapp.commands.execute('kernel-checkpoint:checkpoint', {
          label: 'branch'
        })
      );
      await expect(panel(page).locator('.jp-KernelCheckpoint-item.jp-mod-branch')).toHaveCount(1, {
        timeout: SLOW
      });
      await idle(page);
      await page.mouse.move(0, 0);
      expect(
        await panel(page).screenshot({
          mask: [
            panel(page).locator('.jp-KernelCheckpoint-meta'),
            panel(page).locator('.jp-KernelCheckpoint-footer')
          ],
          animations: 'disabled'
        })
      ).toMatchSnapshot(`timeline-${theme}.png`);
    });
  }
});

/**
 * The checkpoint timeline against a real JupyterLab, a real kernel supervisor and a
 * real engine (CRIU): the kernelspec 'python3-checkpoint' must be installed in the
 * test server's data folder.
 */
import { expect, test } from '@jupyterlab/galata';
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';
import * as fs from 'fs';
import * as path from 'path';
import { runCell } from './cells';

const KERNEL = 'python3-checkpoint';
/** Checkpoints and restores of a small kernel take about a second; allow for a slow machine. */
const SLOW = 30_000;
/** Every test finishes within a minute. */
const TEST_TIMEOUT = 60_000;

test.use({ autoGoto: true, viewport: { width: 1400, height: 900 } });
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
    timeout: SLOW
  });
}

/**
 * Append a code cell with `source` to the current notebook, run it and return its text output.
 * Through the notebook's own model and its Run command (one round trip: Galata's typing helpers
 * take seconds per cell); the cell's rendered output is then checked in the page.
 */
async function run(page: IJupyterLabPageFixture, source: string): Promise<string> {
  const { index, text } = await runCell(page, source);
  if (text) {
    const cell = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell');
    await expect(cell.nth(index).locator('.jp-OutputArea-output')).not.toHaveCount(0);
  }
  return text;
}

/** The fresh kernel's first list has arrived (made-up checkpoints put in later stay). */
async function loaded(page: IJupyterLabPageFixture): Promise<void> {
  await expect(panel(page).locator('.jp-KernelCheckpoint-empty')).toContainText(
    'No checkpoints yet',
    { timeout: SLOW }
  );
}

async function idle(page: IJupyterLabPageFixture): Promise<void> {
  await expect(toolbarButton(page)).toHaveAttribute('aria-busy', 'false', { timeout: SLOW });
}

const node = (page: IJupyterLabPageFixture, id: string) =>
  panel(page).locator(`.jp-KernelCheckpoint-node[data-checkpoint-id="${id}"]`);
const toolbarAction = (page: IJupyterLabPageFixture, name: string) =>
  panel(page).locator(`.jp-KernelCheckpoint-actions .jp-KernelCheckpoint-${name}`);

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
  await node(page, id).click();
  await expect(node(page, id)).toHaveAttribute('aria-selected', 'true');
  await toolbarAction(page, 'restore').click();
  await page.getByRole('button', { name: 'Confirm restore' }).click();
  await idle(page);
  await expect(node(page, id)).toHaveClass(/jp-mod-current/, { timeout: SLOW });
}

/** Stop the current notebook's kernel and close it, discarding its changes; returns its path. */
async function closeWithoutSaving(page: IJupyterLabPageFixture): Promise<string> {
  return page.evaluate(async () => {
    const widget = (window as any).jupyterapp.shell.currentWidget;
    const path: string = widget.context.path;
    await widget.sessionContext.shutdown();
    widget.context.model.dirty = false; // close without the "save changes?" dialog
    widget.dispose();
    return path;
  });
}

/** Open the notebook at `path` on a new checkpointable kernel. */
async function openNotebook(page: IJupyterLabPageFixture, path: string): Promise<void> {
  await page.evaluate(
    async ({ file, kernel }: { file: string; kernel: string }) => {
      await (window as any).jupyterapp.commands.execute('docmanager:open', {
        path: file,
        factory: 'Notebook',
        kernel: { name: kernel }
      });
    },
    { file: path, kernel: KERNEL }
  );
}

test.describe('kernel checkpoint timeline', () => {
  test('checkpoint, restore an older node, and branch', async ({ page }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'timeline.ipynb');
    expect(await run(page, 'x = 1\nprint("x =", x)')).toBe('x = 1');

    // The toolbar button: a node appears and is the current one.
    const first = await checkpointWithButton(page);
    await expect(node(page, first).locator('.jp-KernelCheckpoint-count')).toHaveText(/^\[\d+\]$/);

    // Change the variable and checkpoint again: a child of the first node.
    expect(await run(page, 'x = 2\nprint("x =", x)')).toBe('x = 2');
    const second = await checkpointWithButton(page);
    // A straight chain: one lane, the newest on top.
    await expect(nodes(page).first()).toHaveAttribute('data-checkpoint-id', second);
    await expect(node(page, second)).toHaveAttribute('aria-level', '2');

    // Restore the first node from the panel: the old value is back.
    await restoreFromPanel(page, first);
    expect(await run(page, 'print("x =", x)')).toBe('x = 1');

    // The next checkpoint branches off the first node.
    const third = await checkpointWithButton(page);
    await expect(node(page, first)).toHaveClass(/jp-mod-branch/);
    await expect(node(page, third)).toHaveAttribute('aria-level', '2');
    await expect(node(page, third)).toHaveClass(/jp-mod-current/);
    // The branch has a lane of its own: two dots in different columns.
    const cx = (id: string) => node(page, id).locator('circle').getAttribute('cx');
    expect(await cx(third)).not.toEqual(await cx(second));
    expect(await cx(first)).toEqual(await cx(third));
    await expect(panel(page).locator('.jp-KernelCheckpoint-node.jp-mod-current')).toHaveCount(1);
  });

  test('the toolbar button has a tooltip; the Kernel menu has the checkpoint items', async ({
    page
  }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'menu.ipynb');
    const button = toolbarButton(page);
    await expect(button).toHaveAttribute('aria-label', 'Checkpoint kernel');
    await expect(button).toHaveAttribute(
      'title',
      'Checkpoint kernel: save the whole kernel process to restore it later'
    );
    await expect(button.locator('svg')).toBeVisible();
    await expect(button).toContainText('Checkpoint');

    await page.menu.open('Kernel');
    const menu = page.locator('.lm-Menu.lm-MenuBar-menu');
    await expect(menu).toBeVisible();
    for (const [label, shortcut] of [
      ['Checkpoint Kernel', /K$/],
      ['Restore Kernel…', null],
      ['Show Checkpoint Timeline', /K$/]
    ] as const) {
      const entry = menu.locator('.lm-Menu-item', {
        has: page.locator('.lm-Menu-itemLabel', { hasText: new RegExp(`^${label}$`) })
      });
      await expect(entry, `Kernel menu item "${label}"`).toHaveCount(1);
      await expect(entry).not.toHaveClass(/lm-mod-disabled/);
      await expect(entry.locator('.lm-Menu-itemIcon svg')).toHaveCount(1);
      if (shortcut) {
        await expect(entry.locator('.lm-Menu-itemShortcut')).toHaveText(shortcut);
      }
    }
    await page.keyboard.press('Escape');
    await expect(menu).toHaveCount(0);
  });

  test('a checkpoint made by the %checkpoint magic appears live', async ({ page }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'magic.ipynb');
    await run(page, 'z = 3');
    const before = await nodes(page).count();
    // The magic prints the new checkpoint's id and label.
    expect(await run(page, '%checkpoint -m from-magic')).toMatch(
      /^Checkpoint ckpt-\S+ "from-magic"/
    );
    await expect(nodes(page)).toHaveCount(before + 1, { timeout: SLOW });
    await expect(
      panel(page).locator('.jp-KernelCheckpoint-node.jp-mod-current .jp-KernelCheckpoint-label')
    ).toContainText('from-magic');
  });

  test('restore a session from a saved image after the kernel is replaced', async ({ page }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'saved-session.ipynb');
    await run(page, 'y = 42\nprint("y =", y)');
    const saved = await checkpointWithButton(page);

    // Shut the kernel down and start a new one.
    await page.evaluate(async (kernel: string) => {
      const app = (window as any).jupyterapp;
      const widget = app.shell.currentWidget;
      await widget.sessionContext.shutdown();
      await widget.sessionContext.changeKernel({ name: kernel });
    }, KERNEL);
    await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
      timeout: SLOW
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
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'failing.ipynb');
    await run(page, 'w = 7');
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

    await node(page, id).click();
    await toolbarAction(page, 'restore').click();
    await page.getByRole('button', { name: 'Confirm restore' }).click();
    // A JupyterLab notification with the supervisor's reason: the image is damaged.
    const toast = page.locator('.Toastify__toast').filter({ hasText: 'Restore failed:' });
    await expect(toast).toBeVisible({ timeout: SLOW });
    await expect(toast).toContainText(`Checkpoint ${id} is damaged`);
    // The node is still there and the kernel's current node is unchanged.
    await expect(node(page, id)).toHaveClass(/jp-mod-current/);
    // The kernel that ran before the failed restore is still there, unchanged.
    expect(await run(page, 'print(w)')).toBe('7');
  });

  test('a kernel that is not checkpointable gets an explanation and a switch', async ({ page }) => {
    test.setTimeout(TEST_TIMEOUT);
    await requireCheckpointKernel(page);
    await page.notebook.createNew('plain.ipynb', { kernel: 'python3' });
    await page.menu.clickMenuItem('Kernel>Show Checkpoint Timeline');
    const box = panel(page).locator('.jp-KernelCheckpoint-unavailable');
    await expect(box).toContainText('cannot be checkpointed', { timeout: SLOW });
    await box.getByRole('button', { name: /Switch this notebook to the kernel/ }).click();
    await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
      timeout: SLOW
    });
    const kernelName = await page.evaluate(
      () => (window as any).jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.name
    );
    expect(kernelName).toBe(KERNEL);
  });

  test('history is kept across a rename and a new kernel', async ({ page }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'identity.ipynb');
    // Galata names a new notebook by renaming it: the first checkpoint must come after that.
    await expect(panel(page).locator('.jp-KernelCheckpoint-notebook')).toHaveText(
      'identity.ipynb',
      {
        timeout: SLOW
      }
    );
    await run(page, 'q = 5');
    const saved = await checkpointWithButton(page);
    const notebookId = await page.evaluate(
      () =>
        (window as any).jupyterapp.shell.currentWidget.model.getMetadata('kernel_checkpoint')
          ?.notebook_id
    );
    expect(notebookId, 'the first checkpoint writes an id into the notebook').toMatch(
      /^[0-9a-f-]{36}$/
    );

    // Rename the notebook, then give it a new kernel.
    await page.evaluate(async (kernel: string) => {
      const app = (window as any).jupyterapp;
      const widget = app.shell.currentWidget;
      await widget.context.rename('identity-renamed.ipynb');
      await widget.sessionContext.shutdown();
      await widget.sessionContext.changeKernel({ name: kernel });
    }, KERNEL);
    await expect(panel(page).locator('.jp-KernelCheckpoint-notebook')).toHaveText(
      'identity-renamed.ipynb',
      { timeout: SLOW }
    );
    await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
      timeout: SLOW
    });
    await expect(panel(page).locator('.jp-KernelCheckpoint-offer')).toBeVisible({ timeout: SLOW });
    await expect(node(page, saved)).toBeVisible();
    await restoreFromPanel(page, saved);
    expect(await run(page, 'print(q)')).toBe('5');
  });

  test('a new notebook with a reused name is offered nothing', async ({ page }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'reused.ipynb');
    // Galata names a new notebook by renaming it: the first checkpoint must come after that.
    await expect(panel(page).locator('.jp-KernelCheckpoint-notebook')).toHaveText('reused.ipynb', {
      timeout: SLOW
    });
    await run(page, 'r = 1');
    await checkpointWithButton(page);
    // Stop its kernel, close it and delete the file.
    const closed = await closeWithoutSaving(page);
    await page.evaluate(
      (file: string) => (window as any).jupyterapp.serviceManager.contents.delete(file),
      closed
    );
    const dir = closed.split('/').slice(0, -1).join('/');
    // A new, unrelated notebook gets the same name.
    await page.evaluate(async (folder: string) => {
      const app = (window as any).jupyterapp;
      const model = await app.serviceManager.contents.newUntitled({
        path: folder,
        type: 'notebook'
      });
      await app.serviceManager.contents.rename(model.path, `${folder}/reused.ipynb`);
    }, dir);
    await openNotebook(page, `${dir}/reused.ipynb`);
    await expect(panel(page).getByRole('button', { name: 'Checkpoint kernel' })).toBeVisible({
      timeout: SLOW
    });
    await expect(panel(page).locator('.jp-KernelCheckpoint-empty')).toContainText(
      'No checkpoints yet',
      { timeout: SLOW }
    );
    await expect(nodes(page)).toHaveCount(0);
  });

  test('a notebook closed without saving the id of its checkpoints gets it back', async ({
    page
  }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'unsaved-id.ipynb');
    await expect(panel(page).locator('.jp-KernelCheckpoint-notebook')).toHaveText(
      'unsaved-id.ipynb',
      { timeout: SLOW }
    );
    await run(page, 'u = 7');
    const current = () =>
      page.evaluate(() => {
        const widget = (window as any).jupyterapp.shell.currentWidget;
        return {
          dirty: widget.context.model.dirty as boolean,
          id: widget.context.model.getMetadata('kernel_checkpoint')?.notebook_id as
            string | undefined
        };
      });
    expect((await current()).dirty, 'the cell left unsaved changes').toBe(true);
    const saved = await checkpointWithButton(page);
    const { id } = await current();
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    // Stop its kernel and close it without saving: the file on disk has no id.
    const path = await closeWithoutSaving(page);
    const onDisk = await page.evaluate(async (at: string) => {
      const model = await (window as any).jupyterapp.serviceManager.contents.get(at);
      return model.content.metadata?.kernel_checkpoint?.notebook_id ?? null;
    }, path);
    expect(onDisk).toBeNull();

    // Opened again, with a new kernel: its checkpoint is there, and the id is back (on disk with
    // the next save; until then it is found again the same way).
    await openNotebook(page, path);
    await expect(node(page, saved)).toBeVisible({ timeout: SLOW });
    expect((await current()).id).toBe(id);
    // The next checkpoint carries the same id (not a new one): one history.
    await run(page, 'u = 8');
    const next = await checkpointWithButton(page);
    expect((await current()).id).toBe(id);
    await expect(node(page, saved)).toBeVisible();
    await restoreFromPanel(page, saved);
    expect(await run(page, 'print(u)')).toBe('7');
    await expect(node(page, next)).toBeVisible();
  });

  test('500 checkpoints render in one column and scroll', async ({ page }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'many.ipynb');
    await loaded(page);
    const { ms, rows, lanes } = await page.evaluate(fakeTimeline, { count: 500, branches: false });
    console.log(`timeline: 500 checkpoints rendered in ${ms.toFixed(1)} ms (Chromium)`);
    expect(lanes).toBe(1);
    expect(rows).toBeLessThan(60); // virtualized: only the rows in view
    const graph = panel(page).locator('.jp-KernelCheckpoint-graph');
    const scroll = await graph.evaluate(async g => {
      const t0 = performance.now();
      for (let i = 0; i < 20; i++) {
        g.scrollTop += 400;
        await new Promise(r => requestAnimationFrame(r));
      }
      return performance.now() - t0;
    });
    console.log(`timeline: 20 scroll steps of 400 px in ${scroll.toFixed(0)} ms`);
    await expect(graph.locator('.jp-KernelCheckpoint-node').first()).not.toHaveAttribute(
      'data-checkpoint-id',
      'ckpt-fake-0499'
    );
    // No horizontal scrollbar, nothing cut off at the default width.
    const overflow = await graph.evaluate(g => g.scrollWidth - g.clientWidth);
    expect(overflow).toBeLessThanOrEqual(0);
  });

  test('keyboard: one Tab stop, arrows move, the details show the diff', async ({ page }) => {
    test.setTimeout(TEST_TIMEOUT);
    await newNotebook(page, 'keys.ipynb');
    await loaded(page);
    await page.evaluate(fakeTimeline, { count: 50, branches: true });
    const tree = panel(page).getByRole('tree', { name: 'Kernel checkpoints' });
    await expect(tree).toHaveAttribute('tabindex', '0');
    await expect(panel(page).locator('[role=treeitem][tabindex]')).toHaveCount(0);
    await tree.focus();
    const selected = panel(page).locator('[role=treeitem][aria-selected=true]');
    await expect(selected).toHaveCount(1);
    const start = await selected.getAttribute('data-checkpoint-id');
    await page.keyboard.press('ArrowDown');
    await expect(selected).not.toHaveAttribute('data-checkpoint-id', start!);
    await page.keyboard.press('Home');
    await expect(selected).toHaveAttribute('data-checkpoint-id', 'ckpt-fake-0049');
    await expect(tree).toHaveAttribute('aria-activedescendant', /ckpt-fake-0049$/);
    // The details: the variable added since its parent.
    const details = panel(page).locator('.jp-KernelCheckpoint-details');
    await expect(details.locator('.jp-KernelCheckpoint-detailsTitle')).toHaveText('step 49');
    await expect(
      details.locator('.jp-KernelCheckpoint-parentDiff [data-change=added]')
    ).toContainText('v49');
    await expect(
      details.locator('.jp-KernelCheckpoint-parentDiff [data-change=changed]')
    ).toContainText('arr');
    // Left goes to the parent; F2 opens the rename dialog.
    await page.keyboard.press('ArrowLeft');
    await expect(selected).toHaveAttribute('data-checkpoint-id', 'ckpt-fake-0048');
    await page.keyboard.press('F2');
    await expect(page.locator('.jp-Dialog')).toContainText('Rename Checkpoint');
    await page.keyboard.press('Escape');
    // The context menu acts on the row under the pointer; Compare, then another row: their diff.
    await node(page, 'ckpt-fake-0045').click({ button: 'right' });
    const menu = page.locator('.lm-Menu');
    for (const label of ['Restore Checkpoint', 'Rename Checkpoint…', 'Delete Checkpoint…']) {
      await expect(menu.getByText(label, { exact: true })).toBeVisible();
    }
    await menu.getByText('Compare With…', { exact: true }).click();
    await expect(panel(page).locator('.jp-KernelCheckpoint-comparing')).toContainText('step 45');
    await node(page, 'ckpt-fake-0047').click();
    const compare = details.locator('.jp-KernelCheckpoint-compareDiff');
    await expect(compare).toContainText('"step 45" → "step 47"');
    await expect(compare.locator('[data-change=added]')).toContainText('v47');
    await expect(compare.locator('[data-change=removed]')).toContainText('v45');
    await page.keyboard.press('Escape');
    await expect(compare).toHaveCount(0);
    // Enter asks before a restore; for a node taken mid-cell it says what that means.
    await node(page, 'ckpt-fake-0045').click();
    await expect(details).toContainText('taken mid-cell');
    await page.keyboard.press('Enter');
    await expect(page.locator('.jp-Dialog')).toContainText('continues that cell from that point');
    await page.getByRole('button', { name: 'Cancel' }).click();
    await expect(page.locator('.jp-Dialog')).toHaveCount(0);
    // Deleting a node with children warns about them.
    await page.evaluate(() => {
      // Not awaited: the command waits for the dialog's answer.
      void (window as any).jupyterapp.commands.execute('kernel-checkpoint:delete', {
        id: 'ckpt-fake-0025'
      });
    });
    await expect(page.locator('.jp-Dialog')).toContainText('It has 2 child checkpoints');
    await page.getByRole('button', { name: 'Cancel' }).click();
    // The search filters by variable name.
    await panel(page).getByRole('searchbox').fill('v7');
    await expect(panel(page).locator('[role=treeitem]')).toHaveCount(1);
  });

  for (const theme of ['light', 'dark'] as const) {
    test(`a 50-node timeline in the ${theme} theme`, async ({ page }) => {
      test.setTimeout(TEST_TIMEOUT);
      if (theme === 'dark') {
        await page.theme.setDarkTheme();
      } else {
        await page.theme.setLightTheme();
      }
      await newNotebook(page, `theme-${theme}.ipynb`);
      await loaded(page);
      // Galata names a new notebook by renaming it: the header must show the new name.
      await expect(panel(page).locator('.jp-KernelCheckpoint-notebook')).toHaveText(
        `theme-${theme}.ipynb`,
        { timeout: SLOW }
      );
      await page.evaluate(fakeTimeline, { count: 50, branches: true });
      // The diff against the running kernel is drawn once its state has been read.
      await expect(panel(page).locator('.jp-KernelCheckpoint-kernelDiff')).toContainText(
        'running kernel now',
        { timeout: SLOW }
      );
      await expect(page.locator('.Toastify__toast')).toHaveCount(0, { timeout: SLOW });
      await page.mouse.move(0, 0);
      if (process.env.UI_TESTS_PAGE_SHOT) {
        await page.screenshot({ path: `${process.env.UI_TESTS_PAGE_SHOT}-${theme}.png` });
      }
      expect(
        await panel(page).screenshot({
          // The footer names the store's folder; the details say the clock time of the node.
          mask: [
            panel(page).locator('.jp-KernelCheckpoint-footer'),
            panel(page).locator('.jp-KernelCheckpoint-facts dd').first()
          ],
          animations: 'disabled'
        })
      ).toMatchSnapshot(`timeline-${theme}.png`);
    });
  }
});

/**
 * In the page: put `count` made-up checkpoints into the timeline's model (a chain, with two
 * branches when `branches`), each five minutes after the last, the newest current; draw them and
 * return the time it took, the rows in the DOM and the lanes.
 */
function fakeTimeline({ count, branches }: { count: number; branches: boolean }) {
  const app = (window as any).jupyterapp;
  const timeline = Array.from(app.shell.widgets('right') as Iterable<any>).find(
    (w: any) => w.id === 'jp-kernel-checkpoint-timeline'
  );
  const model = timeline.session.model;
  const id = (i: number) => `ckpt-fake-${String(i).padStart(4, '0')}`;
  const now = Date.now();
  const list = [];
  for (let i = 0; i < count; i++) {
    let parent = i === 0 ? null : id(i - 1);
    if (branches && i === Math.floor(count * 0.6)) {
      parent = id(Math.floor(count * 0.3)); // restored an older one, then went on
    }
    if (branches && i === count - 3) {
      parent = id(Math.floor(count * 0.5));
    }
    list.push({
      format: 'kernel-checkpoint/1',
      id: id(i),
      parent_id: parent,
      label: `step ${i}`,
      created: new Date(now - (count - i) * 300_000).toISOString(),
      engine: { name: 'criu', version: '4.2.1' },
      duration_ms: 900 + i,
      snapshot_ms: 300,
      image_bytes: (40 + i) * 1024 * 1024,
      kernel: { name: 'python3-checkpoint', display_name: 'Python 3', language: 'python' },
      notebook_path: timeline.session.path,
      state: {
        execution_count: i + 1,
        cell_running: i % 10 === 5,
        cells: [{ execution_count: i + 1, source: `v${i} = ${i}\narr = np.zeros(${i + 1})` }],
        variables: [
          {
            name: 'arr',
            type: 'numpy.ndarray',
            size_bytes: 8 * (i + 1),
            shape: [i + 1],
            dtype: 'float64'
          },
          { name: `v${i}`, type: 'int', size_bytes: 28 }
        ]
      }
    });
  }
  const t0 = performance.now();
  model.setCheckpoints(list, id(count - 1));
  timeline._render();
  void timeline.node.offsetHeight; // layout
  const ms = performance.now() - t0;
  return {
    ms,
    rows: timeline.node.querySelectorAll('.jp-KernelCheckpoint-node').length,
    lanes: model.graph().lanes
  };
}

import { expect, test } from '@jupyterlab/galata';

const PLUGIN_ID = 'jupyterlab-kernel-checkpoint:plugin';

test('the extension is activated', async ({ page }) => {
  const state = await page.evaluate(async (id: string) => {
    const app = (window as any).jupyterapp;
    const hasPlugin: boolean = app.hasPlugin(id);
    if (hasPlugin && !app.isPluginActivated(id)) {
      await app.activatePlugin(id);
    }
    return { hasPlugin, activated: app.isPluginActivated(id) };
  }, PLUGIN_ID);

  expect(state).toEqual({ hasPlugin: true, activated: true });
});

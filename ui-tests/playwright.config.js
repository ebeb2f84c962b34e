// Galata UI tests. They run Debian's Chromium (no browser download) against a private Jupyter
// server started here, with its own JUPYTER_* and IPYTHONDIR folders so runs share no state.
const path = require('path');
const baseConfig = require('@jupyterlab/galata/lib/playwright-config');

const port = Number(process.env.UI_TESTS_PORT || 8899);
const root = path.resolve(__dirname, '..');
const venvBin = path.join(root, '.venv', 'bin');
const state = path.join(__dirname, '.jupyter-test');

module.exports = {
  ...baseConfig,
  timeout: 120 * 1000,
  retries: 0,
  workers: 1,
  reporter: [['list'], ['html', { open: 'never' }]],
  use: {
    ...baseConfig.use,
    baseURL: `http://127.0.0.1:${port}`,
    video: 'off',
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run'
      ]
    }
  },
  webServer: {
    command: `${path.join(venvBin, 'jupyter')} lab --config jupyter_server_test_config.py --ServerApp.port=${port}`,
    cwd: __dirname,
    url: `http://127.0.0.1:${port}/lab`,
    timeout: 120 * 1000,
    reuseExistingServer: false,
    stdout: 'ignore',
    stderr: 'pipe',
    env: {
      ...process.env,
      PATH: `${venvBin}:${process.env.PATH}`,
      JUPYTER_CONFIG_DIR: path.join(state, 'config'),
      JUPYTER_DATA_DIR: path.join(state, 'data'),
      JUPYTER_RUNTIME_DIR: path.join(state, 'runtime'),
      IPYTHONDIR: path.join(state, 'ipython')
    }
  }
};

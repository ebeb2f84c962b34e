import type { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import type { Checkpoint } from '../protocol/checkpoint-protocol';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-kernel-checkpoint:plugin',
  description: 'Checkpoint and restore Jupyter kernels from JupyterLab.',
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    const none: Checkpoint[] = [];
    console.log('jupyterlab-kernel-checkpoint is activated', none.length === 0 ? '' : '');
    void app;
  }
};

export default plugin;

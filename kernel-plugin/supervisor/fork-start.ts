// How a fork's own supervisor (`kernel-checkpoint run --from-image ID`) starts its kernel: from
// the image, in namespaces of its own (the engine's `isolate`), beside the original kernel and
// every other fork of the same image. The kernel keeps its image's lineage (its paths and key,
// as recorded: so its own checkpoints restore like any other image of that lineage, and are
// children of ID); the supervisor reaches it through a folder of its own (`forkLineage`).

import type { ImageStore } from '../store/store';
import type { AgentChannel } from './agent';
import type { KernelHost } from './kernel-host';
import { forkLineage, prepareLineageDir, recordedLineage } from './lineage';
import { log } from './log';
import type { Relay } from './relay';
import { RequestError } from './request-errors';
import type { RestoreFlow } from './restore-flow';

export interface ForkStartOptions {
  store: ImageStore;
  cwd: string;
  env: NodeJS.ProcessEnv;
}

export async function startFork(
  id: string,
  options: ForkStartOptions,
  host: KernelHost,
  relay: Relay,
  agent: AgentChannel,
  restoreFlow: RestoreFlow
): Promise<void> {
  const { record } = await restoreFlow.verify(id, () => undefined);
  if (!host.engine.forks) {
    throw new RequestError(
      'engine_unavailable',
      `The ${host.engine.name} engine cannot start a fork; forks need the criu engine.`
    );
  }
  const image = recordedLineage(record);
  const own = forkLineage(image, options.env);
  await prepareLineageDir(own);
  host.outside = own;
  host.lineage = image;
  const agentEndpoint = record.agentEndpoint && own.agentEndpoint;
  // Connected while CRIU restores (acceptsConnectionsWhileRestoring): the kernel's first
  // answer ends the wait for the restore.
  host.useEndpointsOf(own, agentEndpoint);
  const answered = relay
    .connectKernel(120000)
    .then(live => (live ? undefined : new Promise<void>(() => undefined)));
  host.connectAgent();
  // A chunk image is rebuilt into files for the engine, and they go once it has read them.
  const files = await options.store.openImage(id, record);
  let kernel: Awaited<ReturnType<typeof host.engine.restore>>;
  try {
    kernel = await host.engine.restore(files.dir, record.engineData, {
      argv: [],
      env: options.env,
      cwd: options.cwd,
      workDir: own.ipcDir,
      answered,
      isolate: { imageIpcDir: image.ipcDir, ownIpcDir: own.ipcDir }
    });
  } finally {
    await files.release();
  }
  host.adopt(kernel);
  host.currentId = id;
  await host.reconnect();
  if (agentEndpoint !== null) {
    agent.send({ type: 'restarted', checkpoint_id: id });
  }
  log.info(`fork of ${id} running (pid ${kernel.pid})`);
}

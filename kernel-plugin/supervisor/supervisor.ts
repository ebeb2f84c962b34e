// The kernel supervisor: what Jupyter launches as "the kernel". It relays every channel to the
// real kernel process, answers the kernel_checkpoint comm itself, and drives the engine to
// checkpoint and restore that process. See docs/architecture.md for the path of a checkpoint.

import { readFileSync } from 'node:fs';
import os from 'node:os';

import type {
  Action,
  Checkpoint,
  ErrorCode,
  Request,
  StateSummary,
  SupervisorMessage,
  SupervisorStatus
} from '../../protocol/checkpoint-protocol';
import {
  ACTIONS,
  COMM_TARGET,
  MANIFEST_FORMAT,
  MARKER_MSG_TYPE,
  PROTOCOL_VERSION
} from '../../protocol/checkpoint-protocol-constants';
import { EngineError, type Engine, type EngineProbe, type KernelProcess } from '../engines/engine';
import { ImageStore, newCheckpointId, StoreError } from '../store/store';
import { AgentChannel, AgentTimeout } from './agent';
import {
  kernelCommand,
  newLineage,
  prepareLineageDir,
  removeLineageDir,
  type KernelCommand,
  type Lineage
} from './kernel-setup';
import { log } from './log';
import { Relay, type OutstandingRequest } from './relay';
import { acceptedConnections, waitForKernelToLetGo } from './sockets';
import {
  newMessage,
  peekContent,
  stringField,
  type ConnectionInfo,
  type Frames,
  type Header
} from './wire';

/** Status messages whose parent is one of these do not change a client's idea of busy/idle. */
const UNTRACKED_PARENTS = new Set([
  'comm_info_request',
  'kernel_info_request',
  'shutdown_request',
  'interrupt_request',
  'debug_request',
  'usage_request'
]);
const MAX_COMMS = 64;

/** A failed request: what the client gets as ErrorReply. */
export class RequestError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly detail?: string
  ) {
    super(message);
  }
}

function asRequestError(error: unknown): RequestError {
  if (error instanceof RequestError) {
    return error;
  }
  if (error instanceof StoreError || error instanceof EngineError) {
    return new RequestError(error.code, error.message, (error as EngineError).detail);
  }
  return new RequestError('engine_failed', (error as Error)?.message ?? String(error));
}

export interface KernelIdentity {
  name: string;
  display_name: string;
  language: string;
}

export interface SupervisorOptions {
  connection: ConnectionInfo;
  connectionFile?: string;
  argv: string[];
  engine: Engine;
  store: ImageStore;
  kernel: KernelIdentity;
  notebookPath: string | null;
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** How long pre-checkpoint hooks may take. */
  prepareTimeoutMs?: number;
}

type Sink = (message: SupervisorMessage) => void;

export class Supervisor {
  private readonly relay: Relay;
  private readonly agent: AgentChannel;
  private kernel: KernelProcess | null = null;
  private command: KernelCommand | null = null;
  private lineage: Lineage;
  private probe: EngineProbe | null = null;
  private currentId: string | null = null;
  private busy: Action | null = null;
  private kernelIdle = true;
  private shuttingDown = false;
  private readonly comms = new Map<string, { session: string }>();
  private markerWaiters = new Map<string, () => void>();
  private seenMarkers = new Set<string>();
  /** Images whose checksums are being computed, after the checkpoint's reply went out. */
  private readonly sealing = new Map<string, Promise<void>>();
  /** The cell the kernel process is running, as its iopub says. */
  private executing: { msgId: string; count: number | null } | null = null;
  private exiting = false;

  constructor(private readonly options: SupervisorOptions) {
    this.lineage = newLineage(options.env, options.connection);
    this.relay = new Relay(options.connection, this.lineage.connection, {
      onClientRequest: (channel, frames, header) => this.onClientRequest(channel, frames, header),
      onKernelIopub: (frames, msgType) => this.onKernelIopub(frames, msgType)
    });
    this.agent = new AgentChannel(null, request =>
      this.handleRequest(request, message => this.agent.send(message), true)
    );
  }

  /** Binds Jupyter's ports and starts the kernel under the engine (plainly if it cannot run). */
  async start(): Promise<void> {
    this.probe = await this.options.engine.probe();
    if (!this.probe.ok) {
      log.warn(
        `${this.probe.problem} The kernel runs, but cannot be checkpointed. ${this.probe.remedy ?? ''}`
      );
    }
    await this.relay.bindFront();
    await this.launchKernel();
  }

  private async launchKernel(): Promise<void> {
    await prepareLineageDir(this.lineage);
    this.command = kernelCommand(
      this.options.argv,
      this.lineage,
      this.options.env,
      this.options.connectionFile,
      this.probe?.ok ? (this.options.engine.ipykernelFlags ?? []) : []
    );
    const spec = {
      argv: this.command.argv,
      env: this.command.env,
      cwd: this.options.cwd,
      workDir: this.lineage.ipcDir
    };
    const kernel = this.probe?.ok
      ? await this.options.engine.launch(spec)
      : await import('../engines/process').then(({ startPipelineKernel }) =>
          startPipelineKernel(['setsid', '--fork', '--wait', ...spec.argv], spec)
        );
    this.adoptKernel(kernel);
    this.relay.setKernelConnection(this.lineage.connection);
    this.agent.setEndpoint(this.command.withPlugin ? this.lineage.agentEndpoint : null);
    void this.relay.connectKernel(60000);
    this.connectAgent();
  }

  private adoptKernel(kernel: KernelProcess): void {
    this.kernel = kernel;
    kernel.stdout?.on('data', (chunk: Buffer) => process.stderr.write(chunk));
    kernel.stderr?.on('data', (chunk: Buffer) => process.stderr.write(chunk));
    void kernel.exited.then(exit => {
      if (this.kernel !== kernel) {
        return; // Replaced on purpose (restore).
      }
      this.kernel = null;
      if (this.shuttingDown) {
        log.info('the kernel shut down');
        void this.exit(0);
      } else {
        log.error(`the kernel exited unexpectedly (code ${exit.code}, signal ${exit.signal})`);
        void this.exit(1);
      }
    });
  }

  private connectAgent(): void {
    if (!this.command?.withPlugin) {
      return;
    }
    this.agent.connect();
    // Introduce ourselves so the plugin may send what it queued while we were away.
    this.agent.send({ type: 'ping' });
  }

  /** Stops the kernel and leaves; the supervisor never outlives its kernel. */
  async exit(code: number): Promise<never> {
    if (!this.exiting) {
      this.exiting = true;
      const kernel = this.kernel;
      this.kernel = null;
      if (kernel) {
        await kernel.terminate();
        // And the processes around it (a launcher's shell, its output pipe): leave none behind.
        await Promise.race([kernel.exited, new Promise(resolve => setTimeout(resolve, 2000))]);
      }
      this.relay.close();
      this.agent.disconnect();
      await removeLineageDir(this.lineage);
    }
    process.exit(code);
  }

  interruptKernel(): void {
    this.kernel?.signal('SIGINT');
  }

  // ---- messages from clients -------------------------------------------------------------

  private onClientRequest(
    channel: 'shell' | 'control' | 'stdin',
    frames: Frames,
    header: Header
  ): boolean {
    const type = header.msg_type;
    if (type === 'shutdown_request') {
      this.shuttingDown = true;
      if (!this.kernel && !this.busy) {
        void this.exit(0);
      }
      return false;
    }
    if (type === 'kernel_info_request' && this.relay.holdsShell && this.relay.kernelInfo) {
      // The kernel is away for a snapshot or a restore: answer for it, as it last answered,
      // so that clients connecting now (a new tab, the command line) need not wait.
      const session = this.relay.session;
      const reply = newMessage('kernel_info_reply', this.relay.kernelInfo, {
        session,
        parent: header
      });
      void this.relay.publish(
        newMessage('status', { execution_state: 'busy' }, { session, parent: header })
      );
      void this.relay.reply(channel, frames.identities, reply);
      void this.relay.publish(
        newMessage('status', { execution_state: 'idle' }, { session, parent: header })
      );
      return true;
    }
    if (channel === 'control' && type === 'interrupt_request') {
      this.interruptKernel();
      const reply = newMessage(
        'interrupt_reply',
        { status: 'ok' },
        { session: this.relay.session, parent: header }
      );
      void this.relay.reply('control', frames.identities, reply);
      return true;
    }
    if (channel !== 'shell' || !type.startsWith('comm_')) {
      return false;
    }
    let content: Record<string, any>;
    try {
      content = peekContent(frames);
    } catch {
      return false;
    }
    if (type === 'comm_open' && content.target_name === COMM_TARGET) {
      this.openComm(content, header);
      return true;
    }
    const commId = content.comm_id as string;
    if (!this.comms.has(commId)) {
      return false;
    }
    if (type === 'comm_close') {
      this.comms.delete(commId);
    } else if (type === 'comm_msg') {
      this.withStatus(header, () =>
        this.handleRequest(content.data as Request, message =>
          this.sendComm(commId, message, header)
        )
      );
    }
    return true;
  }

  private openComm(content: Record<string, any>, header: Header): void {
    const commId = content.comm_id as string;
    const version = String(content.data?.protocol_version ?? '');
    this.withStatus(header, () => {
      if (version.split('.')[0] !== PROTOCOL_VERSION.split('.')[0]) {
        this.sendComm(
          commId,
          this.errorMessage(
            '',
            'status',
            new RequestError(
              'unsupported_protocol',
              `This kernel speaks kernel_checkpoint protocol ${PROTOCOL_VERSION}, the client ${version || 'none'}.`
            )
          ),
          header
        );
        return;
      }
      this.comms.set(commId, { session: header.session });
      while (this.comms.size > MAX_COMMS) {
        this.comms.delete(this.comms.keys().next().value as string);
      }
      this.sendComm(commId, { type: 'hello', status: this.status() }, header);
    });
  }

  /**
   * Wraps the supervisor's answer in busy/idle like a kernel would, so clients can tell when it
   * is done; but only while the kernel is idle, or a client would think a running cell ended.
   */
  private withStatus(parent: Header, body: () => void): void {
    const idle = this.kernelIdle && !this.busy;
    if (idle) {
      void this.relay.publish(
        newMessage('status', { execution_state: 'busy' }, { session: this.relay.session, parent })
      );
    }
    body();
    if (idle) {
      void this.relay.publish(
        newMessage('status', { execution_state: 'idle' }, { session: this.relay.session, parent })
      );
    }
  }

  private sendComm(
    commId: string,
    data: SupervisorMessage,
    parent: Header | Record<string, never> = {}
  ): void {
    void this.relay.publish(
      newMessage('comm_msg', { comm_id: commId, data }, { session: this.relay.session, parent })
    );
  }

  private broadcast(message: SupervisorMessage): void {
    for (const commId of this.comms.keys()) {
      this.sendComm(commId, message);
    }
  }

  // ---- messages from the kernel ----------------------------------------------------------

  /** Tracks what the kernel is doing from its status messages; every message passes but markers. */
  private onKernelIopub(frames: Frames, msgType: string): boolean {
    if (msgType === MARKER_MSG_TYPE) {
      let id = '';
      try {
        id = (peekContent(frames) as { checkpoint_id?: string }).checkpoint_id ?? '';
      } catch {
        // Unreadable: it still is a marker, and still not for clients.
      }
      // The marker may come before the plugin's `prepared` reaches us: remember it.
      this.seenMarkers.add(id);
      this.markerWaiters.get(id)?.();
      return false;
    }
    if (msgType !== 'status' && msgType !== 'execute_input') {
      return true;
    }
    // Fields are peeked, not parsed: this runs for three messages of every cell.
    try {
      const [, parentHeader, , content] = frames.parts;
      const parentId = stringField(parentHeader, 'msg_id');
      if (msgType === 'execute_input') {
        if (this.executing && this.executing.msgId === parentId) {
          this.executing.count = peekContent(frames).execution_count ?? null;
        }
        return true;
      }
      const parentType = stringField(parentHeader, 'msg_type');
      const state = stringField(content, 'execution_state');
      if (!parentType || !UNTRACKED_PARENTS.has(parentType)) {
        this.kernelIdle = state === 'idle';
      }
      if (parentType === 'execute_request' && parentId) {
        if (state === 'busy') {
          this.executing = { msgId: parentId, count: null };
        } else if (state === 'idle' && this.executing?.msgId === parentId) {
          this.executing = null;
        }
      }
    } catch {
      // An unreadable message changes nothing.
    }
    return true;
  }

  // ---- requests (from the comm, the CLI, or the in-kernel plugin) ---------------------------

  status(): SupervisorStatus {
    const engine = { name: this.options.engine.name, version: this.probe?.version ?? 'unknown' };
    return {
      protocol_version: PROTOCOL_VERSION,
      engine,
      engine_ok: this.probe?.ok ?? false,
      ...(this.probe?.ok
        ? {}
        : {
            engine_problem: `${this.probe?.problem ?? 'unknown'} ${this.probe?.remedy ?? ''}`.trim()
          }),
      current_id: this.currentId,
      kernel_name: this.options.kernel.name,
      notebook_path: this.options.notebookPath,
      busy: this.busy,
      plugin: this.agent.present,
      store: this.options.store.root
    };
  }

  /** Handles one request; never throws: failures become an ErrorReply. */
  handleRequest(request: Request, send: Sink, fromKernel = false): void {
    const requestId = typeof request?.request_id === 'string' ? request.request_id : '';
    const action = request?.action;
    if (!requestId || !ACTIONS.includes(action)) {
      send(
        this.errorMessage(
          requestId,
          String(action ?? ''),
          new RequestError(
            'invalid_request',
            `Not a kernel_checkpoint request: it needs a request_id and an action (one of ${ACTIONS.join(', ')}).`
          )
        )
      );
      return;
    }
    const progress = (
      stage: Extract<SupervisorMessage, { type: 'progress' }>['stage'],
      message?: string
    ) =>
      send({
        type: 'progress',
        request_id: requestId,
        action,
        stage,
        ...(message ? { message } : {})
      });
    this.perform(request, progress, fromKernel)
      .then(result =>
        send({
          type: 'reply',
          request_id: requestId,
          action,
          current_id: this.currentId,
          ...result
        })
      )
      .catch(error => {
        const failure = asRequestError(error);
        log.warn(
          `${action} failed: ${failure.code}: ${failure.message}${failure.detail ? `\n${failure.detail}` : ''}`
        );
        send(this.errorMessage(requestId, action, failure));
      });
  }

  private errorMessage(requestId: string, action: string, error: RequestError): SupervisorMessage {
    return {
      type: 'error',
      request_id: requestId,
      action,
      error: {
        code: error.code,
        message: error.message,
        ...(error.detail ? { detail: error.detail } : {})
      }
    };
  }

  private async perform(
    request: Request,
    progress: (stage: any, message?: string) => void,
    fromKernel: boolean
  ): Promise<{ checkpoint?: Checkpoint; checkpoints?: Checkpoint[]; status?: SupervisorStatus }> {
    this.learnNotebook(request);
    switch (request.action) {
      case 'status':
        return { status: this.status() };
      case 'list':
        return { checkpoints: await this.list(request) };
      case 'label':
        return { checkpoint: await this.label(this.requireId(request), request.label ?? null) };
      case 'delete':
        return this.exclusive('delete', async () => ({
          checkpoint: await this.delete(this.requireId(request))
        }));
      case 'checkpoint':
        return this.exclusive('checkpoint', async () => ({
          checkpoint: await this.checkpoint(request, progress)
        }));
      case 'restore':
        return this.exclusive('restore', async () => ({
          checkpoint: await this.restore(this.requireId(request), progress, fromKernel)
        }));
    }
    throw new RequestError('invalid_request', `Unknown action ${JSON.stringify(request.action)}.`);
  }

  private requireId(request: Request): string {
    if (typeof request.checkpoint_id !== 'string' || !request.checkpoint_id) {
      throw new RequestError('invalid_request', `${request.action} needs a checkpoint_id.`);
    }
    return request.checkpoint_id;
  }

  private async exclusive<T>(action: Action, body: () => Promise<T>): Promise<T> {
    if (this.busy) {
      throw new RequestError(
        'busy',
        `Another ${this.busy} is under way; try again when it has finished.`
      );
    }
    this.busy = action;
    if (action !== 'delete') {
      this.relay.holdShell();
    }
    this.broadcast({ type: 'event', event: 'busy', action, current_id: this.currentId });
    // A delete waits for its image's seal, so only checkpoints and restores pause sealing.
    const releaseSealing =
      action === 'delete' ? () => undefined : this.options.store.background.hold();
    try {
      return await body();
    } finally {
      releaseSealing();
      this.relay.releaseShell();
      this.busy = null;
      this.broadcast({ type: 'event', event: 'idle', action, current_id: this.currentId });
      if (this.shuttingDown && !this.kernel) {
        void this.exit(0);
      }
    }
  }

  /**
   * The notebook a client names with its id (the front end reads it from the notebook's
   * metadata): requests that name none (the magics, the CLI) are recorded and listed as hers.
   */
  private learnNotebook(request: Request): void {
    if (request.notebook_id) {
      this.notebook = {
        id: request.notebook_id,
        path: request.notebook_path ?? this.notebook.path
      };
    }
  }

  private notebook: { id: string | null; path: string | null } = {
    id: null,
    path: null
  };

  private async list(request: Request): Promise<Checkpoint[]> {
    const all = await this.options.store.list();
    if (request.scope === 'all') {
      return all;
    }
    // This notebook's images, and the tree the running kernel belongs to.
    const notebook = request.notebook_path ?? this.notebook.path ?? this.options.notebookPath;
    const notebookId = request.notebook_id ?? this.notebook.id;
    // An image with a notebook id is that notebook's only (a new notebook that got the old
    // one's name is offered nothing); one made before ids existed is found by its path.
    const ours = (c: Checkpoint) =>
      c.notebook_id ? c.notebook_id === notebookId : !!notebook && c.notebook_path === notebook;
    const byId = new Map(all.map(c => [c.id, c]));
    const rootOf = (c: Checkpoint): string => {
      const seen = new Set<string>();
      while (c.parent_id && byId.has(c.parent_id) && !seen.has(c.id)) {
        seen.add(c.id);
        c = byId.get(c.parent_id)!;
      }
      return c.id;
    };
    const current = this.currentId ? byId.get(this.currentId) : undefined;
    const ourRoot = current ? rootOf(current) : null;
    return all.filter(c => ours(c) || (ourRoot !== null && rootOf(c) === ourRoot));
  }

  private async label(id: string, label: string | null): Promise<Checkpoint> {
    const checkpoint = await this.options.store.relabel(id, label);
    this.broadcast({
      type: 'event',
      event: 'labelled',
      checkpoint,
      checkpoint_id: id,
      current_id: this.currentId
    });
    return checkpoint;
  }

  private async delete(id: string): Promise<Checkpoint> {
    const checkpoint = await this.options.store.manifest(id);
    await this.sealing.get(id);
    await this.options.store.delete(id);
    if (this.currentId === id) {
      this.currentId = checkpoint.parent_id;
    }
    this.broadcast({
      type: 'event',
      event: 'deleted',
      checkpoint_id: id,
      current_id: this.currentId
    });
    return checkpoint;
  }

  private requireEngine(): void {
    if (!this.probe?.ok) {
      throw new RequestError(
        'engine_unavailable',
        `${this.probe?.problem ?? 'The checkpoint engine cannot run here.'} ${this.probe?.remedy ?? ''}`.trim()
      );
    }
  }

  private async checkpoint(
    request: Request,
    progress: (stage: any, message?: string) => void
  ): Promise<Checkpoint> {
    const started = Date.now();
    this.requireEngine();
    const kernel = this.kernel;
    if (!kernel) {
      throw new RequestError('kernel_not_running', 'There is no kernel process to checkpoint.');
    }
    const id = newCheckpointId();
    const label = request.label ?? null;
    const pending = await this.options.store.begin(id);
    let summary: StateSummary | null = null;
    let gated = false;
    let resumed = false;
    let snapshot: Awaited<ReturnType<Engine['checkpoint']>> | null = null;
    let snapshotError: unknown = null;
    try {
      progress('preparing');
      if (this.agent.connected && this.agent.present) {
        try {
          const prepared = await this.agent.ask(
            { type: 'prepare', checkpoint_id: id, label },
            'prepared',
            this.options.prepareTimeoutMs ?? 120000
          );
          if (prepared.veto) {
            throw new RequestError(
              'vetoed',
              `A pre-checkpoint hook refused the checkpoint: ${prepared.veto}`
            );
          }
          summary = prepared.summary ?? null;
          gated = true;
          for (const hookError of prepared.hook_errors ?? []) {
            log.warn(`pre-checkpoint hook failed: ${hookError}`);
          }
        } catch (error) {
          if (!(error instanceof AgentTimeout)) {
            throw error;
          }
          log.warn(`${error.message}; checkpointing without hooks and state summary`);
        }
      }
      progress('quiescing');
      this.relay.pause();
      if (gated) {
        await this.waitForMarker(id, 10000);
      }
      const closed = {
        acceptedBefore: acceptedConnections(this.lineage.ipcDir, kernel.pid),
        closed: this.relay.kernelConnections + (this.agent.connected ? 1 : 0)
      };
      this.relay.disconnectKernel();
      this.agent.disconnect();
      await waitForKernelToLetGo(this.lineage.ipcDir, kernel.pid, 10000, closed);
      progress('snapshotting');
      try {
        snapshot = await this.options.engine.checkpoint(kernel, pending.imageDir);
      } catch (error) {
        snapshotError = error;
      }
      progress('resuming');
      await this.reconnect();
      if (gated) {
        this.agent.send(
          snapshot
            ? { type: 'resumed', checkpoint_id: id }
            : {
                type: 'aborted',
                checkpoint_id: id,
                error: {
                  code: asRequestError(snapshotError).code,
                  message: asRequestError(snapshotError).message
                }
              }
        );
      }
      resumed = true;
      this.relay.resume();
      if (!snapshot) {
        throw snapshotError;
      }
      progress('saving');
      const notebookId = request.notebook_id ?? this.notebook.id;
      const manifest: Checkpoint = {
        format: MANIFEST_FORMAT,
        id,
        parent_id: this.currentId,
        label,
        created: new Date(started).toISOString(),
        engine: { name: this.options.engine.name, version: snapshot.version },
        duration_ms: 0,
        snapshot_ms: snapshot.frozenMs,
        image_bytes: 0,
        kernel: this.options.kernel,
        notebook_path: request.notebook_path ?? this.notebook.path ?? this.options.notebookPath,
        ...(notebookId ? { notebook_id: notebookId } : {}),
        host: { hostname: os.hostname(), arch: process.arch, kernel_release: os.release() },
        state: summary
      };
      manifest.duration_ms = Date.now() - started;
      const saved = await pending.commit(manifest, {
        format: MANIFEST_FORMAT,
        engine: this.options.engine.name,
        engineData: snapshot.data,
        kernelConnection: this.lineage.connection,
        ipcDir: this.lineage.ipcDir,
        agentEndpoint: this.command?.withPlugin ? this.lineage.agentEndpoint : null,
        lineage: this.lineage.id,
        arch: process.arch
      });
      this.currentId = id;
      this.sealInBackground(id);
      log.info(`checkpoint ${id}: ${saved.image_bytes} bytes in ${Date.now() - started} ms`);
      this.broadcast({
        type: 'event',
        event: 'created',
        checkpoint: saved,
        checkpoint_id: id,
        current_id: id
      });
      return saved;
    } catch (error) {
      await pending.discard();
      if (!resumed) {
        if (!this.relay.kernelConnected && this.kernel) {
          await this.reconnect();
        }
        if (gated) {
          this.agent.send({
            type: 'aborted',
            checkpoint_id: id,
            error: { code: asRequestError(error).code, message: asRequestError(error).message }
          });
        }
        this.relay.resume();
      }
      throw error;
    }
  }

  /** Checksums an image while the user goes on; a delete of it waits for this. */
  private sealInBackground(id: string): void {
    const started = Date.now();
    const sealing = this.options.store
      .seal(id)
      .then(() => log.debug(`sealed ${id} in ${Date.now() - started} ms`))
      .catch(error => log.warn(`could not checksum ${id}: ${(error as Error).message}`))
      .finally(() => this.sealing.delete(id));
    this.sealing.set(id, sealing);
  }

  private waitForMarker(id: string, timeoutMs: number): Promise<void> {
    if (this.seenMarkers.delete(id)) {
      return Promise.resolve();
    }
    return new Promise(resolve => {
      const timer = setTimeout(() => {
        log.warn(
          "the kernel plugin's iopub marker did not arrive; output sent just before the snapshot may be late"
        );
        this.markerWaiters.delete(id);
        resolve();
      }, timeoutMs);
      this.markerWaiters.set(id, () => {
        clearTimeout(timer);
        this.seenMarkers.delete(id);
        this.markerWaiters.delete(id);
        resolve();
      });
    });
  }

  /**
   * Answers the cell the replaced kernel process was running, which that process never will:
   * a cell that asked for this restore (`%checkpoint restore`) ends well; any other was cut
   * short and ends in an error saying why.
   */
  private finishReplacedCell(cell: OutstandingRequest, id: string, askedForIt: boolean): void {
    const session = this.relay.session;
    const parent = cell.header;
    const count = this.executing?.count ?? 0;
    const evalue = `The kernel was restored from checkpoint ${id} while this cell ran.`;
    if (askedForIt) {
      void this.relay.publish(
        newMessage(
          'stream',
          { name: 'stdout', text: `Restored checkpoint ${id}.\n` },
          { session, parent }
        )
      );
    } else {
      void this.relay.publish(
        newMessage(
          'error',
          { ename: 'KernelRestored', evalue, traceback: [`KernelRestored: ${evalue}`] },
          { session, parent }
        )
      );
    }
    const content = askedForIt
      ? { status: 'ok', execution_count: count, user_expressions: {}, payload: [] }
      : { status: 'error', execution_count: count, ename: 'KernelRestored', evalue, traceback: [] };
    void this.relay.reply(
      'shell',
      cell.frames.identities,
      newMessage('execute_reply', content, { session, parent })
    );
    void this.relay.publish(newMessage('status', { execution_state: 'idle' }, { session, parent }));
  }

  /** Points the relay and the agent channel at a restored kernel's endpoints. */
  private useEndpointsOf(lineage: Lineage, agentEndpoint: string | null): void {
    this.relay.setKernelConnection(lineage.connection);
    this.agent.setEndpoint(agentEndpoint);
    this.command = { argv: [], env: {}, withPlugin: agentEndpoint !== null };
  }

  /** Connects to the (resumed or restored) kernel again and waits until its iopub is live. */
  private async reconnect(): Promise<void> {
    const live = await this.relay.connectKernel(30000);
    if (!live) {
      log.warn("the kernel's iopub did not answer within 30 s of reconnecting");
    }
    this.connectAgent();
  }

  private async restore(
    id: string,
    progress: (stage: any, message?: string) => void,
    fromKernel: boolean
  ): Promise<Checkpoint> {
    const store = this.options.store;
    // An image still being sealed (checksummed) is restored on its sizes: it was written
    // moments ago by this supervisor, and waiting would add a full read of it to the restore.
    // Both read at once; a problem with the manifest is reported first, as when read in turn.
    const [manifestRead, recordRead] = await Promise.allSettled([
      store.manifest(id),
      store.privateRecord(id)
    ]);
    if (manifestRead.status === 'rejected') {
      throw manifestRead.reason;
    }
    if (recordRead.status === 'rejected') {
      throw recordRead.reason;
    }
    const manifest = manifestRead.value;
    const record = recordRead.value;
    if (record.engine !== this.options.engine.name) {
      throw new RequestError(
        'foreign_image',
        `Checkpoint ${id} was made by the ${record.engine} engine; this kernel runs under ${this.options.engine.name}.`
      );
    }
    if (record.arch !== process.arch) {
      throw new RequestError(
        'foreign_image',
        `Checkpoint ${id} was made on ${record.arch}; this machine is ${process.arch}.`
      );
    }
    this.requireEngine();
    progress('verifying');
    await store.verify(id, record, this.options.env.KERNEL_CHECKPOINT_VERIFY === 'always');

    const lineage: Lineage = {
      id: record.lineage,
      ipcDir: record.ipcDir,
      connection: record.kernelConnection as unknown as ConnectionInfo,
      connectionFile: `${record.ipcDir}/connection.json`,
      agentEndpoint: record.agentEndpoint ?? `ipc://${record.ipcDir}/agent`
    };

    // Under CRIU the relay and the agent connect while the image is restored (see the engine's
    // acceptsConnectionsWhileRestoring): their connections are up when the kernel runs.
    const connectsEarly = this.options.engine.acceptsConnectionsWhileRestoring === true;
    progress('stopping');
    this.relay.pause();
    this.relay.disconnectKernel(true);
    this.agent.disconnect();
    const old = this.kernel;
    this.kernel = null;
    // The folder is made ready while the old process dies (its socket files are stale anyway).
    const preparing = prepareLineageDir(lineage).then(
      () => null,
      (error: unknown) => error
    );
    await old?.terminate();
    const orphans = this.relay.takeOutstanding();
    const running = orphans.find(request => request.header.msg_id === this.executing?.msgId);
    const settle = (restored: boolean) => {
      if (running) {
        this.finishReplacedCell(running, id, fromKernel && restored);
      }
      // Requests the old process had queued but not started run in the new one.
      this.relay.requeue(orphans.filter(request => request !== running));
      this.executing = null;
    };
    const oldLineage = this.lineage;
    progress('restoring');
    try {
      const unprepared = await preparing;
      if (unprepared) {
        throw unprepared;
      }
      let answered: Promise<void> | undefined;
      if (connectsEarly) {
        this.useEndpointsOf(lineage, record.agentEndpoint);
        answered = this.relay
          .connectKernel(120000)
          .then(live => (live ? undefined : new Promise<void>(() => undefined)));
        this.connectAgent();
      }
      const spec = {
        argv: [],
        env: this.options.env,
        cwd: this.options.cwd,
        workDir: lineage.ipcDir,
        answered
      };
      const kernel = await this.options.engine.restore(store.imageDir(id), record.engineData, spec);
      this.lineage = lineage;
      this.adoptKernel(kernel);
    } catch (error) {
      // The old kernel is gone; start a fresh one so that the notebook stays usable.
      const failure = asRequestError(error);
      log.error(`restore of ${id} failed, starting a fresh kernel: ${failure.message}`);
      this.relay.disconnectKernel(true);
      this.agent.disconnect();
      this.lineage = newLineage(this.options.env, this.options.connection);
      this.currentId = null;
      await this.launchKernel();
      settle(false);
      this.relay.resume();
      throw new RequestError(
        failure.code,
        `${failure.message} A fresh kernel was started instead.`,
        failure.detail
      );
    }
    if (oldLineage.id !== lineage.id) {
      await removeLineageDir(oldLineage);
    }
    if (!connectsEarly) {
      this.useEndpointsOf(lineage, record.agentEndpoint);
    }
    progress('reconnecting');
    await this.reconnect();
    if (record.agentEndpoint !== null) {
      this.agent.send({ type: 'restarted', checkpoint_id: id });
    }
    this.currentId = id;
    settle(true);
    this.relay.resume();
    log.info(`restored ${id}`);
    this.broadcast({
      type: 'event',
      event: 'restored',
      checkpoint: manifest,
      checkpoint_id: id,
      current_id: id
    });
    return manifest;
  }
}

/** Reads and checks a connection file. */
export function readConnectionFile(file: string): ConnectionInfo {
  const info = JSON.parse(readFileSync(file, 'utf8')) as ConnectionInfo;
  for (const field of [
    'shell_port',
    'iopub_port',
    'stdin_port',
    'control_port',
    'hb_port',
    'ip',
    'key'
  ] as const) {
    if (info[field] === undefined) {
      throw new Error(`connection file ${file} has no ${field}`);
    }
  }
  info.transport ??= 'tcp';
  info.signature_scheme ??= 'hmac-sha256';
  return info;
}

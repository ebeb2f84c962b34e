// The contract between the supervisor and a checkpoint engine (CRIU, DMTCP, ...).
//
// Shaped like what it controls, as jupyter_client's KernelProvisioner is: an engine starts a
// kernel process in a form it can later snapshot, snapshots it while it keeps running, and
// starts a kernel process again from a snapshot. The supervisor does everything around that
// (relaying, quiescing the kernel's sockets, the store, the protocol), so an engine knows
// nothing of Jupyter.

import type { Readable } from 'node:stream';

import type { ServedPages } from './page-server';

/** What `probe` found: whether this engine can run here, and if not, why and what to do. */
export interface EngineProbe {
  name: string;
  ok: boolean;
  /** The engine's version when it could be found (even if too old). */
  version?: string;
  /** Path of the engine's main executable, when found. */
  path?: string;
  /** Why it cannot run here, in one sentence, when ok is false. */
  problem?: string;
  /** What to install or change so that it can, when ok is false. */
  remedy?: string;
}

/** How to start a kernel: the wrapped kernel's argv and where it runs. */
export interface LaunchSpec {
  argv: string[];
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** A private folder (0700) for this kernel process: the engine may keep scratch files here. */
  workDir: string;
  /**
   * Restore only: resolves once the supervisor, connected during the restore, has heard the
   * kernel answer. The kernel runs, so the restore is over: the engine may stop waiting for
   * its own sign of it.
   */
  answered?: Promise<void>;
  /**
   * Restore only, for a fork beside a live kernel: the kernel gets mount, network and PID
   * namespaces of its own, in which `ownIpcDir` (a private folder the supervisor sees) stands at
   * `imageIpcDir` (the ipc folder baked into the image), so its endpoints and ports never
   * collide with those of another kernel restored from the same image.
   */
  isolate?: { imageIpcDir: string; ownIpcDir: string };
  /**
   * Restore only: the image's pages files are not in its folder (or only in part) but served
   * from the chunk store; an engine that restores in full writes them out first (`fillIn`).
   */
  pages?: ServedPages;
}

export interface KernelExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Why an engine stopped a kernel itself (a lazy restore's pages could not be served): the
 * supervisor says this rather than only that the kernel exited.
 */
export const stopCauses = new WeakMap<object, Error>();

/** A running kernel process, however the engine started it. */
export interface KernelProcess {
  /** Host PID of the kernel's root process (the one that is snapshotted). */
  readonly pid: number;
  /** The kernel's stdout and stderr, for the supervisor's log. */
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  /** Settles once the kernel has exited and been reaped. */
  readonly exited: Promise<KernelExit>;
  /** Delivers a signal to the kernel process itself (interrupt: SIGINT). */
  signal(signal: NodeJS.Signals): void;
  /** Stops the kernel for good and reaps it; resolves once it is gone. Never throws. */
  terminate(): Promise<void>;
}

/** What the engine reports of a snapshot. `data` is kept beside the image, privately. */
export interface Snapshot {
  /** The engine's version that wrote the image. */
  version: string;
  /** How long the kernel was frozen. */
  frozenMs: number;
  /** Whatever the engine needs to restore this image later (JSON). */
  data: Record<string, unknown>;
}

/** An engine refused or failed; `code` maps onto the protocol's ErrorCode. */
export class EngineError extends Error {
  constructor(
    readonly code:
      'engine_unavailable' | 'engine_failed' | 'no_space' | 'permission_denied' | 'foreign_image',
    message: string,
    readonly detail?: string
  ) {
    super(message);
    this.name = 'EngineError';
  }
}

/**
 * The engine's own process was killed (by a signal) while it snapshotted the kernel. CRIU killed
 * while its injected code runs in the kernel takes the kernel with it (docs/engines.md, "A killed
 * dump"): a kernel that dies then is the engine's casualty, and is brought back from its image.
 */
export class EngineKilled extends EngineError {
  constructor(
    readonly signal: string,
    message: string,
    detail?: string
  ) {
    super('engine_failed', message, detail);
    this.name = 'EngineKilled';
  }
}

/**
 * An engine, typed by the process handle it makes (`K`): `checkpoint` is only ever given a kernel
 * this engine launched or restored, so it reads that handle's own fields with no cast. (Methods
 * are bivariant in their parameters, so an `Engine<CriuKernel>` is also an `Engine`.)
 */
export interface Engine<K extends KernelProcess = KernelProcess> {
  readonly name: string;

  /** Extra command-line flags an IPython kernel needs to run well under this engine. */
  readonly ipykernelFlags?: readonly string[];

  /**
   * Whether a restored kernel's listening sockets accept connections while the engine is still
   * restoring it (CRIU re-creates them before it resumes the process). The supervisor then
   * connects during the restore, and the connections are up the moment the kernel runs.
   */
  readonly acceptsConnectionsWhileRestoring?: boolean;

  /**
   * Whether `restore` can start a fork beside a live kernel of the same image (`isolate`).
   */
  readonly forks?: boolean;

  /**
   * Whether `restore` resumes the kernel before its memory is back (lazy: CRIU with userfaultfd),
   * and why not when it does not; `kernel-checkpoint doctor` shows it. Absent: always full.
   */
  restoreMode?(): Promise<{ lazy: boolean; reason: string }>;

  /**
   * Resolves once a kernel this engine restored has its whole memory back (a lazy restore's
   * pages all in, or its page server gone); at once for any other kernel. Background work
   * (sealing) waits for it, so it does not take the CPU from the kernel's first faults.
   */
  untilMemoryBack?(kernel: K): Promise<void>;

  /** Whether this engine can run here; cheap enough to call at start-up. */
  probe(): Promise<EngineProbe>;

  /** Starts the kernel under this engine, in a form `checkpoint` can snapshot. */
  launch(spec: LaunchSpec): Promise<K>;

  /**
   * Snapshots the kernel into `imageDir` (an empty private folder). The kernel keeps running
   * afterwards. The supervisor has already disconnected every socket it held to the kernel.
   * On failure the kernel must still be running and `imageDir` may hold partial files.
   */
  checkpoint(kernel: K, imageDir: string): Promise<Snapshot>;

  /**
   * Starts a kernel process from an image in `imageDir`, written by `checkpoint` with `data`.
   * The previous kernel, if any, has already been terminated by the supervisor.
   */
  restore(imageDir: string, data: Record<string, unknown>, spec: LaunchSpec): Promise<K>;
}

/** How an engine is made: engines register a factory under their name (see engines/index.ts). */
export type EngineFactory = () => Engine;

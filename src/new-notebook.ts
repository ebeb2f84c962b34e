/**
 * "Open in a new notebook": a copy of a notebook whose kernel is restored from one of its
 * checkpoints, beside the original (under CRIU the restore runs in namespaces of its own, so the
 * original's kernel lives on). The copy gets a notebook identity of its own that records where
 * it came from (its origin), so its timeline shows that checkpoint as its root and its own
 * checkpoints as children of it, and never the original's other checkpoints.
 */
import type { NotebookPanel } from '@jupyterlab/notebook';
import type { Contents } from '@jupyterlab/services';
import { UUID } from '@lumino/coreutils';
import type { PartialJSONObject, ReadonlyPartialJSONObject } from '@lumino/coreutils';
import type { Checkpoint, CheckpointId } from '../protocol/checkpoint-protocol';
import { CheckpointError } from './comm';
import type { KernelCheckpointSession } from './session';
import type { IKernelCheckpoint } from './tokens';

/** The notebook metadata key of the extension (the notebook's identity, and its origin). */
export const NOTEBOOK_METADATA_KEY = 'kernel_checkpoint';

/** Where a notebook made by "Open in a new notebook" came from (in its metadata). */
export interface INotebookOrigin {
  /** The original notebook's id. */
  readonly notebook_id: string | null;
  /** The checkpoint its kernel was restored from. */
  readonly checkpoint_id: CheckpointId;
  /** The original notebook's path then (for people; the id is what counts). */
  readonly notebook_path?: string;
}

/** The longest label part of a copy's name. */
const MAX_LABEL_CHARS = 40;

/**
 * A checkpoint's label as a file-name part: letters (without accents), digits, '-', '_' and '.'
 * kept, every other run of characters one '-', no leading or trailing '-' or '.', at most 40
 * characters; the checkpoint's id when nothing is left.
 */
export function fileNamePart(label: string | null | undefined, fallback: string): string {
  const cleaned = (label ?? '')
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '') // accents, split off by NFKD
    .replace(/[^A-Za-z0-9._-]+/g, '-')
    .replace(/^[-.]+|[-.]+$/g, '')
    .slice(0, MAX_LABEL_CHARS)
    .replace(/[-.]+$/g, '');
  return cleaned || fallback;
}

/**
 * The path of the copy of `notebookPath` opened from checkpoint `c`:
 * `<folder>/<name>-from-<label>.ipynb`, with `-2`, `-3`... before the extension when that name
 * is taken (`exists` says).
 */
export async function copyPath(
  notebookPath: string,
  c: Checkpoint,
  exists: (path: string) => Promise<boolean>
): Promise<string> {
  const slash = notebookPath.lastIndexOf('/');
  const folder = slash >= 0 ? notebookPath.slice(0, slash + 1) : '';
  const file = notebookPath.slice(slash + 1);
  const stem = file.toLowerCase().endsWith('.ipynb') ? file.slice(0, -'.ipynb'.length) : file;
  const base = `${folder}${stem}-from-${fileNamePart(c.label, c.id)}`;
  for (let n = 1; ; n++) {
    const candidate = n === 1 ? `${base}.ipynb` : `${base}-${n}.ipynb`;
    if (!(await exists(candidate))) {
      return candidate;
    }
  }
}

/** A notebook's origin, read from its kernel_checkpoint metadata; null when it has none. */
export function originOf(meta: unknown): INotebookOrigin | null {
  const origin = (meta as { origin?: Partial<INotebookOrigin> } | null | undefined)?.origin;
  if (!origin || typeof origin.checkpoint_id !== 'string' || !origin.checkpoint_id) {
    return null;
  }
  return {
    notebook_id: typeof origin.notebook_id === 'string' ? origin.notebook_id : null,
    checkpoint_id: origin.checkpoint_id,
    ...(typeof origin.notebook_path === 'string' ? { notebook_path: origin.notebook_path } : {})
  };
}

/**
 * The checkpoints a notebook with an origin shows: its own (its notebook id), and its origin
 * with the origin's ancestors (its history up to the copy); not the original's other ones.
 */
export function visibleFromOrigin(
  checkpoints: readonly Checkpoint[],
  ownId: string | null,
  origin: INotebookOrigin
): Checkpoint[] {
  const byId = new Map(checkpoints.map(c => [c.id, c]));
  const ancestry = new Set<string>();
  let cursor: string | null = origin.checkpoint_id;
  while (cursor && byId.has(cursor) && !ancestry.has(cursor)) {
    ancestry.add(cursor);
    cursor = byId.get(cursor)!.parent_id;
  }
  return checkpoints.filter(c => ancestry.has(c.id) || (ownId !== null && c.notebook_id === ownId));
}

/** How long the copy's kernel may take to start and speak the protocol. */
const KERNEL_READY_TIMEOUT_MS = 120_000;

/** What "Open in a new notebook" needs of JupyterLab (its app, in the extension). */
export interface INewNotebookHost {
  readonly commands: { execute(id: string, args?: ReadonlyPartialJSONObject): Promise<unknown> };
  readonly contents: Pick<Contents.IManager, 'get' | 'save'>;
  readonly checkpoints: IKernelCheckpoint;
}

/** Resolves once `session` speaks the protocol; rejects when its kernel cannot. */
function whenReady(session: KernelCheckpointSession): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const a = session.model.availability;
      if (a.state === 'ready' && session.model.loaded) {
        done();
        resolve();
      } else if (a.state === 'unavailable') {
        done();
        reject(new CheckpointError('not_checkpointable', a.message, 'restore'));
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(
        new CheckpointError(
          'timeout',
          `The new notebook's kernel did not start within ${KERNEL_READY_TIMEOUT_MS / 1000} s.`,
          'restore'
        )
      );
    }, KERNEL_READY_TIMEOUT_MS);
    const done = () => {
      clearTimeout(timer);
      session.model.changed.disconnect(check);
    };
    session.model.changed.connect(check);
    check();
  });
}

/**
 * Copies the notebook of `panel` to `<name>-from-<label>.ipynb` beside it, with a new notebook
 * id and its origin (the original's id and checkpoint `c`) in its metadata, opens it to the
 * right of the original on the same (checkpointable) kernelspec, and restores `c` into its new
 * kernel. Returns the copy's path. The original notebook and its kernel are left as they are.
 */
export async function openInNewNotebook(
  host: INewNotebookHost,
  panel: NotebookPanel,
  session: KernelCheckpointSession,
  c: Checkpoint,
  originalId: string
): Promise<string> {
  const engine = session.model.status?.engine.name;
  if (engine && engine !== 'criu') {
    // Refused before a file is made: its restore would be (docs/engines.md, DMTCP).
    throw new CheckpointError(
      'engine_unavailable',
      `The ${engine} engine cannot restore a checkpoint beside the kernel that made it; ` +
        '"Open in a New Notebook" needs the criu engine.',
      'restore'
    );
  }
  const path = panel.context.path;
  const target = await copyPath(path, c, async candidate => {
    try {
      await host.contents.get(candidate, { content: false });
      return true;
    } catch {
      return false;
    }
  });
  const content = panel.context.model.toJSON() as unknown as {
    metadata: Record<string, unknown>;
  };
  const kernel = session.sessionContext.session?.kernel;
  const spec = kernel ? await kernel.spec : undefined;
  const kernelName = kernel?.name ?? c.kernel.name;
  const origin: INotebookOrigin = {
    notebook_id: originalId,
    checkpoint_id: c.id,
    notebook_path: path
  };
  content.metadata = {
    ...content.metadata,
    kernelspec: {
      name: kernelName,
      display_name: spec?.display_name ?? c.kernel.display_name,
      language: spec?.language ?? c.kernel.language
    },
    [NOTEBOOK_METADATA_KEY]: { notebook_id: UUID.uuid4(), origin }
  };
  await host.contents.save(target, {
    type: 'notebook',
    format: 'json',
    content: content as unknown as PartialJSONObject
  });
  await host.commands.execute('docmanager:open', {
    path: target,
    factory: 'Notebook',
    kernel: { name: kernelName },
    options: { mode: 'split-right', ref: panel.id }
  });
  const opened = host.checkpoints.panelByPath(target);
  if (!opened) {
    throw new CheckpointError('closed', `${target} was made but did not open.`, 'restore');
  }
  const copy = host.checkpoints.sessionFor(opened);
  await opened.sessionContext.ready;
  await whenReady(copy);
  await copy.restore(c.id);
  return target;
}

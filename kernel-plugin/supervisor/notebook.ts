// Which notebook the kernel works for. The front end names it with an id written once into the
// notebook's metadata (so history survives a rename or a move and never leaks to a new notebook
// that got the old name) and with its path; the magics and the CLI name neither, and their
// checkpoints are recorded as the notebook's the front end last named.

import type { Checkpoint, Request } from '../../protocol/checkpoint-protocol';

export class NotebookIdentity {
  private id: string | null = null;
  private path: string | null;

  /** `launchPath`: the notebook Jupyter named when it started the kernel, if any. */
  constructor(launchPath: string | null) {
    this.path = launchPath;
  }

  /** Remembers the notebook a request names with its id. */
  learn(request: Request): void {
    if (request.notebook_id) {
      this.id = request.notebook_id;
      this.path = request.notebook_path ?? this.path;
    }
  }

  /** The notebook's fields for a new checkpoint's manifest. */
  fields(request: Request): Pick<Checkpoint, 'notebook_path' | 'notebook_id'> {
    const id = request.notebook_id ?? this.id;
    return {
      notebook_path: request.notebook_path ?? this.path,
      ...(id ? { notebook_id: id } : {})
    };
  }

  /** The notebook path clients see in the supervisor's status. */
  get currentPath(): string | null {
    return this.path;
  }

  /**
   * Whether an image is the notebook's: one with a notebook id is that notebook's only; one made
   * before ids existed is found by its path.
   */
  owns(checkpoint: Checkpoint, request: Request): boolean {
    const id = request.notebook_id ?? this.id;
    const path = request.notebook_path ?? this.path;
    return checkpoint.notebook_id
      ? checkpoint.notebook_id === id
      : !!path && checkpoint.notebook_path === path;
  }
}

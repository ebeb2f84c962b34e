// Which notebook the kernel works for. The front end names it with an id written once into the
// notebook's metadata (so history survives a rename or a move and never leaks to a new notebook
// that got the old name), with its path, and with when its file was last saved; the magics and
// the CLI name none of them, and their checkpoints are recorded as the notebook's the front end
// last named.
//
// The id reaches the notebook's file only with its next save: a notebook with unsaved changes
// that is checkpointed, then closed without saving, opens again without it. Its images are found
// all the same: they were made for its path when its file had the save time it still has (a new
// notebook that got the old name has another), and the list's reply gives the id back.

import type { Checkpoint, Request } from '../../protocol/checkpoint-protocol';

type Names = Pick<Request, 'notebook_id' | 'notebook_path' | 'notebook_saved'>;

export class NotebookIdentity {
  private id: string | null = null;
  private path: string | null;
  private saved: string | null = null;

  /** `launchPath`: the notebook Jupyter named when it started the kernel, if any. */
  constructor(launchPath: string | null) {
    this.path = launchPath;
  }

  /** Remembers the notebook a request names with its id. */
  learn(request: Names): void {
    if (request.notebook_id) {
      this.id = request.notebook_id;
      this.path = request.notebook_path ?? this.path;
      this.saved = request.notebook_saved ?? this.saved;
    }
  }

  /** The notebook's fields for a new checkpoint's manifest. */
  fields(request: Names): Pick<Checkpoint, 'notebook_path' | 'notebook_id' | 'notebook_saved'> {
    const id = request.notebook_id ?? this.id;
    const saved = request.notebook_saved ?? this.saved;
    return {
      notebook_path: request.notebook_path ?? this.path,
      ...(id ? { notebook_id: id } : {}),
      ...(saved ? { notebook_saved: saved } : {})
    };
  }

  /** The notebook path clients see in the supervisor's status. */
  get currentPath(): string | null {
    return this.path;
  }

  /**
   * The id of the notebook a request names without one: the id this kernel's clients sent for
   * the same path, or else the one carried by the newest of `images` made for that path when
   * the notebook's file had the save time the request gives (the notebook was closed without
   * saving it). Null when the request has an id, or none is found.
   */
  idFor(request: Names, images: readonly Checkpoint[]): string | null {
    if (request.notebook_id) {
      return null;
    }
    const path = request.notebook_path ?? this.path;
    if (this.id && path === this.path) {
      return this.id;
    }
    const saved = request.notebook_saved;
    if (!saved || !path) {
      return null;
    }
    const found = images.filter(
      image => image.notebook_id && image.notebook_path === path && image.notebook_saved === saved
    );
    return found.length ? found[found.length - 1].notebook_id! : null;
  }

  /**
   * Whether an image is the notebook's: one with a notebook id is that notebook's only; one made
   * before ids existed is found by its path.
   */
  owns(checkpoint: Checkpoint, request: Names): boolean {
    const id = request.notebook_id ?? this.id;
    const path = request.notebook_path ?? this.path;
    return checkpoint.notebook_id
      ? checkpoint.notebook_id === id
      : !!path && checkpoint.notebook_path === path;
  }
}

/**
 * "Find the first checkpoint where…": a Python expression, searched for by the supervisor's
 * bisect (evaluated only in forks of the checkpoints, never in the notebook's kernel, which stays
 * usable meanwhile), and the answer selected in the timeline. `FindFirstModel` holds one
 * notebook's search (expression, progress, result); `FindFirstBar` draws it in the timeline;
 * the command `CommandIDs.findFirst` runs one through `findFirstModelOf(session)`.
 */
import { Signal } from '@lumino/signaling';
import type { ISignal } from '@lumino/signaling';
import type { BisectResult, Progress, Reply } from '../../protocol/checkpoint-protocol';
import type { IRequestOptions, RequestParams } from '../comm';
import { CheckpointError } from '../comm';
import type { CheckpointModel } from '../model';
import { checkpointName } from '../text';
import { el } from './details';

/** What a search needs of a notebook's session (KernelCheckpointSession is one). */
export interface IBisectTarget {
  readonly model: CheckpointModel;
  readonly client: {
    readonly state: string;
    request(action: 'bisect', params: RequestParams, options?: IRequestOptions): Promise<Reply>;
  } | null;
  readonly isDisposed?: boolean;
}

export type FindFirstState = 'idle' | 'searching' | 'done' | 'failed';

/** One notebook's "find the first checkpoint where…" search. */
export class FindFirstModel {
  constructor(private readonly target: IBisectTarget) {}

  get state(): FindFirstState {
    return this._state;
  }
  get expression(): string {
    return this._expression;
  }
  get result(): BisectResult | null {
    return this._result;
  }
  get error(): string | null {
    return this._error;
  }
  /** One line per checkpoint evaluated so far ("ckpt-…: false"). */
  get progress(): readonly string[] {
    return this._progress;
  }
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /**
   * Searches for the first checkpoint where `expression` is true and selects it in the
   * timeline. Resolves with the result (also on "true nowhere"); a failure is kept in `error`
   * and rejects with the CheckpointError.
   */
  async find(expression: string, parallel?: number): Promise<BisectResult> {
    const text = expression.trim();
    this._expression = text;
    this._result = null;
    this._error = null;
    this._progress = [];
    try {
      if (this._state === 'searching') {
        throw new CheckpointError('busy', 'A search is under way; wait for its answer.', 'bisect');
      }
      if (!text) {
        throw new CheckpointError(
          'invalid_request',
          'Type a Python expression, e.g. loss > 1.0',
          'bisect'
        );
      }
      const client = this.target.client;
      if (!client || client.state !== 'ready') {
        throw new CheckpointError(
          'closed',
          'The checkpoint channel to the kernel is not open.',
          'bisect'
        );
      }
      this._setState('searching');
      const reply = await client.request(
        'bisect',
        { expression: text, ...(parallel ? { parallel } : {}) },
        { onProgress: p => this._onProgress(p) }
      );
      const result = reply.bisect;
      if (!result) {
        throw new CheckpointError(
          'invalid_request',
          'The supervisor sent no bisect result.',
          'bisect'
        );
      }
      this._result = result;
      if (result.answer_id && !this.target.isDisposed) {
        this.target.model.select(result.answer_id);
      }
      this._setState('done');
      return result;
    } catch (reason) {
      const error =
        reason instanceof CheckpointError
          ? reason
          : new CheckpointError('engine_failed', String(reason), 'bisect');
      this._error = error.message;
      this._setState('failed');
      throw error;
    }
  }

  /** One line for a person: the answer and the checkpoint before it, or why there is none. */
  summary(): string {
    if (this._state === 'searching') {
      const n = this._progress.length;
      return `Searching in forks… ${n} checkpoint${n === 1 ? '' : 's'} evaluated`;
    }
    if (this._state === 'failed') {
      return this._error ?? 'The search failed.';
    }
    const r = this._result;
    if (this._state !== 'done' || !r) {
      return '';
    }
    const name = (id: string) => {
      const c = this.target.model.get(id);
      return c?.label ? `"${checkpointName(c)}"` : id;
    };
    const raised = r.probes.filter(p => p.outcome === 'error' || p.outcome === 'fork_failed');
    const note = raised.length
      ? ` (${raised.length} raised or could not be evaluated: counted as not true)`
      : '';
    const how = `${r.forks} forks, ${r.rounds} rounds`;
    if (!r.answer_id) {
      return `${r.expression} is true at none of the ${r.range.length} checkpoints (${how})${note}.`;
    }
    const before = r.before_id ? `; before it: ${name(r.before_id)}` : ' (the first one searched)';
    return `First true at ${name(r.answer_id)}${before} (${how})${note}.`;
  }

  private _onProgress(progress: Progress): void {
    if (progress.stage === 'evaluating' && progress.message) {
      this._progress = [...this._progress, progress.message];
      this._changed.emit();
    }
  }

  private _setState(state: FindFirstState): void {
    this._state = state;
    this._changed.emit();
  }

  private _state: FindFirstState = 'idle';
  private _expression = '';
  private _result: BisectResult | null = null;
  private _error: string | null = null;
  private _progress: string[] = [];
  private readonly _changed = new Signal<this, void>(this);
}

const models = new WeakMap<IBisectTarget, FindFirstModel>();

/** The search of a session (made on first use): the command and the timeline share it. */
export function findFirstModelOf(target: IBisectTarget): FindFirstModel {
  let model = models.get(target);
  if (!model) {
    model = new FindFirstModel(target);
    models.set(target, model);
  }
  return model;
}

/** The timeline's row: an expression, a Find button, and the search's one-line outcome. */
export class FindFirstBar {
  readonly node = el('form', 'jp-KernelCheckpoint-findFirst');

  constructor() {
    this._input.type = 'text';
    // Short enough for the panel's default width; the label and the button's title say the rest
    // ("Find the first checkpoint where this Python expression is true").
    this._input.placeholder = 'Expression, e.g. x > 3';
    this._input.setAttribute(
      'aria-label',
      'Find the first checkpoint where this Python expression is true'
    );
    this._input.spellcheck = false;
    this._button.type = 'submit';
    this._button.textContent = 'Find';
    this._button.title =
      'Evaluate the expression in forks of the checkpoints (never in this kernel) and select the first where it is true';
    this._status.setAttribute('role', 'status');
    this._status.setAttribute('aria-live', 'polite');
    const row = el('div', 'jp-KernelCheckpoint-findFirstRow');
    row.append(this._input, this._button);
    this.node.append(row, this._status);
    this.node.addEventListener('submit', event => {
      event.preventDefault();
      void this._model?.find(this._input.value).catch(() => undefined);
    });
  }

  /** Shows the search of another session (or none). */
  setModel(model: FindFirstModel | null): void {
    if (this._model === model) {
      return;
    }
    this._model?.changed.disconnect(this._draw, this);
    this._model = model;
    model?.changed.connect(this._draw, this);
    this._input.value = model?.expression ?? '';
    this._draw();
  }

  focus(): void {
    this._input.focus();
  }

  dispose(): void {
    this.setModel(null);
  }

  private _draw(): void {
    const model = this._model;
    const searching = model?.state === 'searching';
    this._button.disabled = !model || searching;
    this._input.disabled = !model || searching;
    this._status.textContent = model?.summary() ?? '';
    this._status.classList.toggle('jp-mod-error', model?.state === 'failed');
  }

  private _model: FindFirstModel | null = null;
  private readonly _input = el('input', 'jp-mod-styled jp-KernelCheckpoint-findFirstInput');
  private readonly _button = el('button', 'jp-Button jp-mod-styled jp-mod-accept');
  private readonly _status = el('div', 'jp-KernelCheckpoint-findFirstStatus');
}

// The bisect request: over a chain of checkpoints (the root, or from_id, down to the kernel's
// current checkpoint, or to_id), the first one where a Python expression is truthy -- FReD's
// reverse-expression watchpoint. The expression is evaluated only in forks of those checkpoints,
// never in the running kernel (which keeps running cells meanwhile), by a binary search with up
// to `parallel` forks at once: each round splits the interval left into parallel + 1 parts. With
// `trace`, the cells recorded between the last false and the first true checkpoint are replayed
// in a fork of the earlier one under a line tracer (kernel_checkpoint/_trace.py, run there), to
// find the cell and line where the expression became true.
//
// It lives in the supervisor, not in the kernel: the front end, the magic and the Python API all
// ask for it (the comm, the agent channel), the running kernel is never blocked by it, and the
// kernel's image never holds a connection to a fork.

import os from 'node:os';

import type {
  BisectProbe,
  BisectResult,
  BisectTrace,
  Checkpoint,
  ErrorCode,
  Request
} from '../../protocol/checkpoint-protocol';
import type { ImageStore } from '../store/store';
import type { Progress } from './checkpoint-flow';
import { ForkClient } from './fork-client';
import type { ForkFlow } from './fork-flow';
import type { KernelHost } from './kernel-host';
import { log } from './log';
import { asRequestError, RequestError } from './request-errors';

/** How long one evaluation of the expression may take in a fork. */
const EVALUATE_TIMEOUT_MS = 600_000;
/** How long the replay of the cells between two checkpoints may take, traced. */
const TRACE_TIMEOUT_MS = 3_600_000;
/**
 * Fork failures that belong to one image (the others would fail every fork alike): a subset of
 * the protocol's error codes, keyed by them so that the compiler checks each.
 */
const IMAGE_ERRORS: Partial<Record<ErrorCode, true>> = {
  corrupt_image: true,
  foreign_image: true,
  unknown_checkpoint: true
};
/** The most forks one request may run at once (the schema's maximum of `parallel`). */
const MAX_PARALLEL = 64;

/** Where the search stands at its end, as indexes into the range. */
export interface SearchOutcome {
  /** The first index found true, or null when none is. */
  first: number | null;
  /** The index before `first` (found false), or null when `first` is 0 or null. */
  before: number | null;
  rounds: number;
}

/**
 * Binary search for the first index of 0..length-1 whose evaluation is true, asking up to
 * `parallel` indexes per round (all of them at once), each round splitting the unknown interval
 * into parallel + 1 parts. Truth is assumed to stay once reached; where it does not, the answer is
 * still a true index right after a false one (or the first index).
 */
export async function searchFirstTrue(
  length: number,
  parallel: number,
  evaluate: (indexes: number[], round: number) => Promise<boolean[]>
): Promise<SearchOutcome> {
  let lo = -1; // known false (or before the start)
  let hi = length; // known true (or past the end)
  let rounds = 0;
  while (hi - lo > 1) {
    const unknown = hi - lo - 1;
    const k = Math.max(1, Math.min(parallel, unknown));
    const step = (hi - lo) / (k + 1);
    const points = Array.from({ length: k }, (_, i) => lo + Math.round((i + 1) * step));
    rounds += 1;
    const truths = await evaluate(points, rounds);
    const firstTrue = points.findIndex((_, i) => truths[i]);
    const newHi = firstTrue >= 0 ? points[firstTrue] : hi;
    let newLo = lo;
    points.forEach((p, i) => {
      if (p < newHi && !truths[i]) {
        newLo = Math.max(newLo, p);
      }
    });
    lo = newLo;
    hi = newHi;
  }
  return hi < length
    ? { first: hi, before: lo >= 0 ? lo : null, rounds }
    : { first: null, before: null, rounds };
}

/**
 * The chain to search, oldest first: from `toId` up its parents to the root, or to `fromId`
 * (which must be one of its ancestors, or itself).
 */
export function bisectRange(
  checkpoints: readonly Checkpoint[],
  toId: string,
  fromId?: string
): Checkpoint[] {
  const byId = new Map(checkpoints.map(c => [c.id, c]));
  for (const id of [toId, fromId]) {
    if (id && !byId.has(id)) {
      throw new RequestError('unknown_checkpoint', `There is no checkpoint ${id} in the store.`);
    }
  }
  const chain: Checkpoint[] = [];
  const seen = new Set<string>();
  let c: Checkpoint | undefined = byId.get(toId);
  while (c && !seen.has(c.id)) {
    seen.add(c.id);
    chain.push(c);
    if (c.id === fromId) {
      return chain.reverse();
    }
    c = c.parent_id ? byId.get(c.parent_id) : undefined;
  }
  if (fromId) {
    throw new RequestError(
      'invalid_request',
      `Checkpoint ${fromId} is not an ancestor of ${toId}: bisect searches one chain of checkpoints.`
    );
  }
  return chain.reverse();
}

/** A Python string literal of `text` (a JSON string literal is one). */
function pythonString(text: string): string {
  return JSON.stringify(text);
}

export class BisectFlow {
  /** The forks of searches under way (each is a kernel with a supervisor of its own). */
  private readonly live = new Set<ForkClient>();
  private readonly starting = new Set<Promise<unknown>>();
  private stopped = false;

  constructor(
    private readonly store: ImageStore,
    private readonly host: KernelHost,
    private readonly forkFlow: ForkFlow
  ) {}

  /**
   * Ends every fork a search has under way (the supervisor is stopping): they are standalone
   * kernels, which would otherwise outlive it. A search still running then fails.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    // Forks being started are ended as soon as they answer (withFork sees `stopped`).
    await Promise.allSettled([...this.starting]);
    await new Promise(resolve => setImmediate(resolve));
    // Asked to end, not waited for: each fork's own supervisor then stops its kernel and exits.
    await Promise.all([...this.live].map(client => client.requestShutdown()));
  }

  async run(
    request: Request,
    progress: Progress
  ): Promise<{ checkpoint?: Checkpoint; bisect: BisectResult }> {
    // Every fork the search started has ended when it answers, whichever way it ends.
    const ending: Promise<void>[] = [];
    try {
      return await this.search(request, progress, ending);
    } finally {
      await Promise.all(ending);
    }
  }

  private async search(
    request: Request,
    progress: Progress,
    ending: Promise<void>[]
  ): Promise<{ checkpoint?: Checkpoint; bisect: BisectResult }> {
    const started = Date.now();
    const expression = (request.expression ?? '').trim();
    if (!expression) {
      throw new RequestError('invalid_request', 'bisect needs an expression to evaluate.');
    }
    if (!this.host.engine.forks) {
      throw new RequestError(
        'engine_unavailable',
        `bisect evaluates the expression in forks of the checkpoints, and the ${this.host.engine.name} ` +
          'engine cannot start a kernel beside another one restored from the same image; forks need ' +
          'the criu engine.'
      );
    }
    const toId = request.to_id ?? this.host.currentId;
    if (!toId) {
      throw new RequestError(
        'invalid_request',
        'This kernel has no checkpoint yet: there is nothing to search (or give to_id).'
      );
    }
    const range = bisectRange(await this.store.list(), toId, request.from_id);
    const parallel = Math.min(
      request.parallel ?? Math.max(1, os.availableParallelism?.() ?? os.cpus().length),
      MAX_PARALLEL
    );
    const probes: BisectProbe[] = [];
    // Why each fork that failed did: the error code of its fork request.
    const failures = new Map<BisectProbe, string>();
    const outcome = await searchFirstTrue(range.length, parallel, async (indexes, round) => {
      const done = await Promise.all(
        indexes.map(i => this.probe(range[i].id, expression, round, progress, ending, failures))
      );
      probes.push(...done);
      const syntax = done.find(p => p.outcome === 'error' && p.error?.startsWith('SyntaxError'));
      if (syntax) {
        throw new RequestError(
          'invalid_request',
          `${JSON.stringify(expression)} is not a Python expression: ${syntax.error}`
        );
      }
      // One damaged image is that checkpoint's problem (not true, reported); forks that fail
      // for another reason before any fork answered mean none will: say so, not "true nowhere".
      const engineFailure = done.find(
        p => p.outcome === 'fork_failed' && !Object.hasOwn(IMAGE_ERRORS, failures.get(p) ?? '')
      );
      if (engineFailure && probes.every(p => p.outcome === 'fork_failed')) {
        throw new RequestError(
          failures.get(engineFailure) as RequestError['code'],
          `bisect could not fork checkpoint ${engineFailure.checkpoint_id}: ${engineFailure.error}`
        );
      }
      return done.map(p => p.outcome === 'true');
    });
    const answer = outcome.first === null ? null : range[outcome.first];
    const before = outcome.before === null ? null : range[outcome.before];
    const result: BisectResult = {
      expression,
      range: range.map(c => c.id),
      answer_id: answer?.id ?? null,
      before_id: before?.id ?? null,
      probes,
      forks: probes.length,
      rounds: outcome.rounds,
      parallel
    };
    if (request.trace && answer) {
      progress(
        'tracing',
        before ? `replaying the cells from ${before.id} to ${answer.id}` : undefined
      );
      result.trace = before
        ? await this.trace(before.id, answer, expression, ending)
        : {
            found: false,
            trusted: false,
            concerns: [],
            error: `the expression is already true at ${answer.id}, the first checkpoint of the range: there is nothing before it to replay from`
          };
    }
    result.duration_ms = Date.now() - started;
    return answer ? { checkpoint: answer, bisect: result } : { bisect: result };
  }

  /**
   * Starts a fork of `id` and gives it to `body`; the fork is always ended, without waiting
   * for it to be gone (its kernel and supervisor take ~1 s to stop): `ending` collects those
   * waits, and the request awaits them all before it answers.
   */
  private async withFork<T>(
    id: string,
    ending: Promise<void>[],
    body: (client: ForkClient) => Promise<T>
  ): Promise<T> {
    if (this.stopped) {
      throw new RequestError('kernel_not_running', 'The supervisor is stopping.');
    }
    const starting = this.forkFlow.run(id, () => undefined, 'dies-with-this-supervisor');
    this.starting.add(starting);
    const { connection_file } = await starting.finally(() => this.starting.delete(starting));
    const client = new ForkClient(connection_file);
    this.live.add(client);
    try {
      if (this.stopped) {
        throw new RequestError('kernel_not_running', 'The supervisor is stopping.');
      }
      return await body(client);
    } finally {
      ending.push(
        client
          .shutdown()
          .catch(error =>
            log.warn(
              `could not end the fork of ${id} (${connection_file}): ${(error as Error).message}`
            )
          )
          .finally(() => this.live.delete(client))
      );
    }
  }

  private async probe(
    id: string,
    expression: string,
    round: number,
    progress: Progress,
    ending: Promise<void>[],
    failures: Map<BisectProbe, string>
  ): Promise<BisectProbe> {
    let probe: BisectProbe;
    try {
      // The newline ends a trailing comment; bool() so that a value whose truth raises (a numpy
      // array) is an error here too.
      const results = await this.withFork(id, ending, client =>
        client.execute('', { truth: `bool((${expression}\n))` }, EVALUATE_TIMEOUT_MS)
      );
      const truth = results.truth;
      probe =
        truth?.status === 'ok'
          ? { checkpoint_id: id, outcome: truth.text === 'True' ? 'true' : 'false', round }
          : {
              checkpoint_id: id,
              outcome: 'error',
              error: truth ? `${truth.ename}: ${truth.evalue}` : 'the fork gave no value',
              round
            };
    } catch (error) {
      const failure = asRequestError(error);
      probe = { checkpoint_id: id, outcome: 'fork_failed', error: failure.message, round };
      failures.set(probe, failure.code);
    }
    progress('evaluating', `${id}: ${probe.outcome}${probe.error ? ` (${probe.error})` : ''}`);
    return probe;
  }

  private async trace(
    beforeId: string,
    answer: Checkpoint,
    expression: string,
    ending: Promise<void>[]
  ): Promise<BisectTrace> {
    const cells = answer.state?.cells ?? [];
    const payload = JSON.stringify({ cells, expression });
    try {
      const results = await this.withFork(beforeId, ending, client =>
        client.execute(
          'import kernel_checkpoint._trace as __kernel_checkpoint_trace',
          { trace: `__kernel_checkpoint_trace.replay_json(${pythonString(payload)})` },
          TRACE_TIMEOUT_MS
        )
      );
      const out = results.trace;
      if (out?.status !== 'ok') {
        throw new Error(out ? `${out.ename}: ${out.evalue}` : 'the fork gave no result');
      }
      return JSON.parse(out.text) as BisectTrace;
    } catch (error) {
      return {
        found: false,
        trusted: false,
        concerns: [],
        error: `the replay could not run: ${(error as Error).message}`
      };
    }
  }
}

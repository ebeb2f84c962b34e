// The engines this supervisor knows, by name. An engine is one module implementing the
// contract in engine.ts; add it here to make it selectable with `--engine NAME`.

import { CriuEngine } from './criu';
import { DmtcpEngine } from './dmtcp';
import type { Engine, EngineFactory, EngineProbe } from './engine';
import { FakeEngine } from './fake';
import { PlainEngine } from './plain';

export const ENGINES: Record<string, EngineFactory> = {
  criu: () => new CriuEngine(),
  dmtcp: () => new DmtcpEngine()
};

/** Selectable by name, never by auto, not listed by doctor: no snapshots; tests only. */
const UNLISTED: Record<string, EngineFactory> = {
  plain: () => new PlainEngine(),
  fake: () => new FakeEngine()
};

/** The order `--engine auto` tries them in: DMTCP needs no privileges, so it comes first. */
export const AUTO_ORDER = ['dmtcp', 'criu'];

export function engineNames(): string[] {
  return Object.keys(ENGINES);
}

export function createEngine(name: string): Engine {
  const factory = ENGINES[name] ?? UNLISTED[name];
  if (!factory) {
    throw new Error(
      `unknown engine ${JSON.stringify(name)}; known engines: ${engineNames().join(', ')}`
    );
  }
  return factory();
}

/**
 * Resolves `auto` to the first engine that can run here. When none can, returns the first one
 * anyway together with every probe, so the caller can explain why nothing runs.
 */
export async function chooseEngine(
  name: string
): Promise<{ engine: Engine; probes: EngineProbe[] }> {
  if (name !== 'auto') {
    const engine = createEngine(name);
    return { engine, probes: [await engine.probe()] };
  }
  const probes: EngineProbe[] = [];
  const candidates = AUTO_ORDER.filter(candidate => ENGINES[candidate]).map(createEngine);
  for (const engine of candidates) {
    const probe = await engine.probe();
    probes.push(probe);
    if (probe.ok) {
      return { engine, probes };
    }
  }
  return { engine: candidates[candidates.length - 1] ?? createEngine('criu'), probes };
}

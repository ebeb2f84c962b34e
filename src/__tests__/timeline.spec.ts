import { CommandRegistry } from '@lumino/commands';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';
import { CheckpointModel } from '../model';
import type { IKernelCheckpoint } from '../tokens';
import { TimelinePanel } from '../widgets/timeline';
import { ckpt, status } from './fakes';

function panelWith(count: number): { panel: TimelinePanel; model: CheckpointModel } {
  const model = new CheckpointModel();
  model.setAvailability({ state: 'ready' });
  model.setStatus(status());
  const start = Date.UTC(2026, 10, 26, 10, 0);
  const list = Array.from({ length: count }, (_, i) =>
    ckpt(
      `ckpt-${String(i).padStart(4, '0')}`,
      i === 0 ? null : `ckpt-${String(i - 1).padStart(4, '0')}`,
      new Date(start + i * 60_000).toISOString(),
      {
        state: { execution_count: i, variables: [{ name: `v${i}`, type: 'int', size_bytes: 28 }] }
      }
    )
  );
  model.setCheckpoints(list, list[count - 1].id);
  const session = { model, path: 'a.ipynb', isDisposed: false, pathChanged: new Signal({}) };
  const manager = {
    current: session,
    currentChanged: new Signal({})
  } as unknown as IKernelCheckpoint;
  const panel = new TimelinePanel({
    id: 't',
    checkpoints: manager,
    commands: new CommandRegistry()
  });
  return { panel, model };
}

describe('TimelinePanel', () => {
  it('renders 500 checkpoints as one column of virtualized rows', () => {
    const t0 = performance.now();
    const { panel, model } = panelWith(500);
    Widget.attach(panel, document.body);
    panel.update();
    // Lumino runs update requests on the next animation frame: draw now.
    (panel as unknown as { _render(): void })._render();
    const ms = performance.now() - t0;
    console.log(`timeline: 500 checkpoints rendered in ${ms.toFixed(1)} ms (jsdom)`);
    const rows = panel.node.querySelectorAll('.jp-KernelCheckpoint-node');
    expect(rows.length).toBeGreaterThan(0);
    expect(rows.length).toBeLessThan(60); // only those in view
    expect(model.graph().lanes).toBe(1);
    const tree = panel.node.querySelector('[role=tree]')!;
    expect(tree.getAttribute('tabindex')).toBe('0');
    const first = rows[0];
    expect(first.getAttribute('role')).toBe('treeitem');
    expect(first.getAttribute('aria-level')).toBe('500');
    expect(first.getAttribute('aria-selected')).toBe('true'); // the current one
    expect(tree.getAttribute('aria-activedescendant')).toBe(first.id);

    // Arrow down selects the next (older) row; the details follow.
    tree.dispatchEvent(new KeyboardEvent('keydown', { key: 'ArrowDown', bubbles: true }));
    expect(model.selectedId).toBe('ckpt-0498');
    (panel as unknown as { _render(): void })._render();
    const details = panel.node.querySelector('.jp-KernelCheckpoint-parentDiff')!;
    expect(details.textContent).toContain('v498');
    expect(details.querySelector('[data-change=added]')!.textContent).toContain('v498');
    expect(details.querySelector('[data-change=removed]')!.textContent).toContain('v497');

    // The search filters by variable name.
    model.setQuery('v42');
    (panel as unknown as { _render(): void })._render();
    const shown = Array.from(panel.node.querySelectorAll('.jp-KernelCheckpoint-node')).map(
      r => (r as HTMLElement).dataset.checkpointId
    );
    expect(shown).toEqual(
      [429, 428, 427, 426, 425, 424, 423, 422, 421, 420, 42].map(
        i => `ckpt-${String(i).padStart(4, '0')}`
      )
    );
    expect(shown.every(id => model.get(id!)!.state!.variables[0].name.includes('v42'))).toBe(true);
    panel.dispose();
  });

  it('shows what changed since the selected checkpoint in the running kernel, when read', () => {
    const { panel, model } = panelWith(3);
    Widget.attach(panel, document.body);
    model.select('ckpt-0001');
    const render = () => (panel as unknown as { _render(): void })._render();
    const kernelDiff = () => panel.node.querySelector('.jp-KernelCheckpoint-kernelDiff')!;
    render();
    // Not read yet: the kernel's current checkpoint stands in, saying so.
    expect(kernelDiff().textContent).toContain('as of its checkpoint');
    expect(kernelDiff().querySelector('[data-change=added]')!.textContent).toContain('v2');

    model.setLive({
      summary: {
        execution_count: 9,
        variables: [
          { name: 'v1', type: 'str', size_bytes: 60 },
          { name: 'fresh', type: 'int', size_bytes: 28 }
        ],
        cell_running: false
      }
    });
    render();
    expect(kernelDiff().textContent).toContain('Changed since this checkpoint');
    expect(kernelDiff().textContent).toContain('running kernel now ([9])');
    expect(kernelDiff().querySelector('[data-change=added]')!.textContent).toContain('fresh');
    expect(kernelDiff().querySelector('[data-change=changed]')!.textContent).toContain('v1');
    expect(kernelDiff().querySelector('[data-change=removed]')).toBeNull();
    // The current checkpoint too is compared with the kernel now.
    model.select('ckpt-0002');
    render();
    expect(kernelDiff().querySelector('[data-change=removed]')!.textContent).toContain('v2');

    model.setLive({ summary: null, error: 'A checkpoint is under way.' });
    render();
    expect(kernelDiff().textContent).toContain('A checkpoint is under way.');
    panel.dispose();
  });
});

import { CheckpointModel, buildTree, flattenTree } from '../model';
import type { ICheckpointNode } from '../model';
import { newBytes, sizeText } from '../text';
import { ckpt } from './fakes';

const A = 'ckpt-20261126T100000Z-00000a';
const B = 'ckpt-20261126T110000Z-00000b';
const C = 'ckpt-20261126T120000Z-00000c';
const D = 'ckpt-20261126T130000Z-00000d';
const E = 'ckpt-20261126T140000Z-00000e';

function shape(nodes: ICheckpointNode[]): unknown {
  return nodes.map(n => ({ id: n.checkpoint.id, children: shape(n.children) }));
}

describe('buildTree', () => {
  // A -> B -> C, restore B, checkpoint again -> D (a branch at B); E is a second root.
  const list = [
    ckpt(D, B, '2026-11-26T13:00:00Z'),
    ckpt(A, null, '2026-11-26T10:00:00Z'),
    ckpt(C, B, '2026-11-26T12:00:00Z'),
    ckpt(E, null, '2026-11-26T14:00:00Z'),
    ckpt(B, A, '2026-11-26T11:00:00Z')
  ];

  it('links nodes by parent_id, siblings and roots in creation order', () => {
    expect(shape(buildTree(list, null))).toEqual([
      {
        id: A,
        children: [
          {
            id: B,
            children: [
              { id: C, children: [] },
              { id: D, children: [] }
            ]
          }
        ]
      },
      { id: E, children: [] }
    ]);
  });

  it('marks the current node and the path from it to its root', () => {
    const nodes = flattenTree(buildTree(list, D));
    const current = nodes.filter(n => n.isCurrent).map(n => n.checkpoint.id);
    const path = nodes.filter(n => n.onCurrentPath).map(n => n.checkpoint.id);
    expect(current).toEqual([D]);
    expect(path.sort()).toEqual([A, B, D].sort());
    expect(nodes.find(n => n.checkpoint.id === C)!.onCurrentPath).toBe(false);
    expect(nodes.find(n => n.checkpoint.id === E)!.onCurrentPath).toBe(false);
  });

  it('gives depths', () => {
    const nodes = flattenTree(buildTree(list, null));
    expect(nodes.map(n => [n.checkpoint.id, n.depth])).toEqual([
      [A, 0],
      [B, 1],
      [C, 2],
      [D, 2],
      [E, 0]
    ]);
  });

  it('makes a node whose parent is not listed a root', () => {
    const tree = buildTree([ckpt(C, B, '2026-11-26T12:00:00Z')], C);
    expect(shape(tree)).toEqual([{ id: C, children: [] }]);
    expect(tree[0].isCurrent).toBe(true);
  });

  it('survives a parent cycle', () => {
    const tree = buildTree(
      [ckpt(A, B, '2026-11-26T10:00:00Z'), ckpt(B, A, '2026-11-26T11:00:00Z')],
      A
    );
    expect(
      flattenTree(tree)
        .map(n => n.checkpoint.id)
        .sort()
    ).toEqual([A, B]);
  });
});

describe('CheckpointModel', () => {
  it('builds its tree from a list reply and marks current_id', () => {
    const model = new CheckpointModel();
    let changes = 0;
    model.changed.connect(() => changes++);
    model.applyReply({
      type: 'reply',
      request_id: 'r',
      action: 'list',
      checkpoints: [ckpt(A, null, '2026-11-26T10:00:00Z'), ckpt(B, A, '2026-11-26T11:00:00Z')],
      current_id: A
    });
    expect(changes).toBeGreaterThan(0);
    expect(model.currentId).toBe(A);
    expect(model.isFresh).toBe(false);
    expect(model.loaded).toBe(true);
    const tree = model.tree();
    expect(tree[0].isCurrent).toBe(true);
    expect(tree[0].children[0].checkpoint.id).toBe(B);
    expect(tree[0].children[0].isCurrent).toBe(false);
  });

  it('a checkpoint reply adds the node and moves current', () => {
    const model = new CheckpointModel();
    model.setCheckpoints([ckpt(A, null, '2026-11-26T10:00:00Z')], A);
    model.applyReply({
      type: 'reply',
      request_id: 'r',
      action: 'checkpoint',
      checkpoint: ckpt(B, A, '2026-11-26T11:00:00Z'),
      current_id: B
    });
    expect(model.checkpoints.map(c => c.id)).toEqual([A, B]);
    expect(model.currentId).toBe(B);
  });

  it('applies created, labelled, deleted and restored events', () => {
    const model = new CheckpointModel();
    model.setCheckpoints([ckpt(A, null, '2026-11-26T10:00:00Z')], A);

    // A checkpoint made by %checkpoint or the CLI.
    model.applyEvent({
      type: 'event',
      event: 'created',
      checkpoint: ckpt(B, A, '2026-11-26T11:00:00Z'),
      current_id: B
    });
    expect(model.get(B)).toBeDefined();
    expect(model.currentId).toBe(B);

    model.applyEvent({
      type: 'event',
      event: 'labelled',
      checkpoint: ckpt(B, A, '2026-11-26T11:00:00Z', { label: 'trained' }),
      current_id: B
    });
    expect(model.get(B)!.label).toBe('trained');

    // Restore A, checkpoint again: a branch at A.
    model.applyEvent({ type: 'event', event: 'restored', checkpoint_id: A, current_id: A });
    expect(model.currentId).toBe(A);
    model.applyEvent({
      type: 'event',
      event: 'created',
      checkpoint: ckpt(C, A, '2026-11-26T12:00:00Z'),
      current_id: C
    });
    const tree = model.tree();
    expect(tree).toHaveLength(1);
    expect(tree[0].children.map(n => n.checkpoint.id)).toEqual([B, C]);
    expect(tree[0].children[1].isCurrent).toBe(true);

    model.applyEvent({ type: 'event', event: 'deleted', checkpoint_id: B, current_id: C });
    expect(model.get(B)).toBeUndefined();
    expect(model.checkpoints.map(c => c.id)).toEqual([A, C]);
  });

  it('shows the new bytes of a `stored` event at once, in place', () => {
    const model = new CheckpointModel();
    model.setCheckpoints([ckpt(A, null, '2026-11-26T10:00:00Z')], A);
    let changes = 0;
    model.changed.connect(() => changes++);
    model.applyEvent({
      type: 'event',
      event: 'stored',
      checkpoint: ckpt(A, null, '2026-11-26T10:00:00Z', { stored_bytes: 4096 }),
      checkpoint_id: A,
      current_id: A
    });
    expect(model.get(A)!.stored_bytes).toBe(4096);
    expect(changes).toBe(1);
    // The row and the details show them.
    expect(newBytes(model.get(A)!)).toBe(4096);
    expect(sizeText(model.get(A)!)).toMatch(/^\+4\.0 KiB of /);
    // A checkpoint deleted before its chunks were cut does not come back.
    model.applyEvent({
      type: 'event',
      event: 'stored',
      checkpoint: ckpt(B, A, '2026-11-26T11:00:00Z', { stored_bytes: 1 }),
      checkpoint_id: B,
      current_id: A
    });
    expect(model.get(B)).toBeUndefined();
  });

  it('follows busy and idle events from other clients without clearing its own busy state', () => {
    const model = new CheckpointModel();
    const seen: Array<string | null> = [];
    model.busyChanged.connect((_, b) => seen.push(b ? b.action : null));
    model.applyEvent({ type: 'event', event: 'busy', action: 'checkpoint', current_id: null });
    expect(model.busy).toMatchObject({ action: 'checkpoint', local: false });
    model.applyEvent({ type: 'event', event: 'idle', current_id: null });
    expect(model.busy).toBeNull();

    model.setBusy({ action: 'restore', local: true });
    model.applyEvent({ type: 'event', event: 'idle', current_id: null });
    expect(model.busy).toMatchObject({ action: 'restore', local: true });
    expect(seen).toEqual(['checkpoint', null, 'restore']);
  });

  it('records progress stages', () => {
    const model = new CheckpointModel();
    model.setBusy({ action: 'checkpoint', local: true });
    model.applyProgress(
      { type: 'progress', request_id: 'r', action: 'checkpoint', stage: 'snapshotting' },
      false
    );
    expect(model.busy).toEqual({
      action: 'checkpoint',
      stage: 'snapshotting',
      message: undefined,
      local: true
    });
  });

  it('clear forgets everything', () => {
    const model = new CheckpointModel();
    model.setCheckpoints([ckpt(A, null, '2026-11-26T10:00:00Z')], A);
    model.clear();
    expect(model.checkpoints).toEqual([]);
    expect(model.currentId).toBeNull();
    expect(model.loaded).toBe(false);
  });
});

import { busyText, checkpointName } from '../text';
import { ckpt } from './fakes';

describe('text', () => {
  it('names a checkpoint by its label, or by its id when it has none', () => {
    const c = ckpt('ckpt-20261126T100000Z-aaaaaa', null, '2026-11-26T10:00:00Z');
    expect(checkpointName({ ...c, label: 'before training' })).toBe('before training');
    expect(checkpointName({ ...c, label: null })).toBe(c.id);
    expect(checkpointName({ ...c, label: '  ' })).toBe(c.id);
  });

  it('says what is under way: the message first, else the stage', () => {
    expect(busyText('checkpoint')).toBe('Checkpointing…');
    expect(busyText('checkpoint', 'snapshotting')).toBe('Checkpointing: Taking the snapshot…');
    expect(busyText('restore', 'reconnecting')).toBe('Restoring: Reconnecting…');
    expect(busyText('restore', 'restoring', 'criu restore')).toBe('Restoring: criu restore…');
  });
});

import { formatBytes, formatDuration, formatLabel, relativeTime } from '../format';
import { readSettings } from '../settings';

describe('format', () => {
  const now = Date.parse('2026-11-26T12:00:00Z');
  it('relativeTime', () => {
    expect(relativeTime('2026-11-26T11:59:50Z', now)).toBe('just now');
    expect(relativeTime('2026-11-26T11:55:00Z', now)).toBe('5 min ago');
    expect(relativeTime('2026-11-26T09:00:00Z', now)).toBe('3 h ago');
    expect(relativeTime('2026-11-25T12:00:00Z', now)).toBe('yesterday');
    expect(relativeTime('2026-11-20T12:00:00Z', now)).toBe('6 days ago');
    expect(relativeTime('2026-01-01T00:00:00Z', now)).toBe('2026-01-01');
  });
  it('formatBytes', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(1.07e9)).toBe('1020 MiB');
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
  });
  it('formatDuration', () => {
    expect(formatDuration(850)).toBe('850 ms');
    expect(formatDuration(1234)).toBe('1.2 s');
    expect(formatDuration(125_000)).toBe('2 min 5 s');
  });
  it('formatLabel expands placeholders', () => {
    const date = new Date(2026, 10, 26, 9, 5, 7);
    expect(
      formatLabel('{notebook} {time} [{count}] #{n} {date} {unknown}', {
        notebookPath: 'work/analysis.ipynb',
        count: 12,
        n: 3,
        date
      })
    ).toBe('analysis 09:05:07 [12] #3 2026-11-26 {unknown}');
    expect(formatLabel('', { notebookPath: 'a.ipynb', count: null, n: 1, date })).toBe('');
  });
});

describe('readSettings', () => {
  it('fills defaults and rejects bad values', () => {
    expect(readSettings({})).toEqual({
      labelFormat: '{notebook} {time} [{count}]',
      confirmRestore: true,
      openPanelOnStart: false,
      autoCheckpoint: { mode: 'off', minutes: 30, seconds: 120 }
    });
    expect(
      readSettings({
        confirmRestore: false,
        autoCheckpoint: { mode: 'long-cell', seconds: 10, minutes: -1 }
      })
    ).toMatchObject({
      confirmRestore: false,
      autoCheckpoint: { mode: 'long-cell', minutes: 30, seconds: 10 }
    });
  });
});

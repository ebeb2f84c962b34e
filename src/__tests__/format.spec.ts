import * as fs from 'fs';
import * as path from 'path';
import type { Checkpoint, SupervisorStatus } from '../../protocol/checkpoint-protocol';
import {
  checkpointTable,
  formatBytes,
  formatDuration,
  parseTimestamp,
  relativeTime,
  statusText
} from '../format';
import { formatLabel } from '../text';
import { readSettings } from '../settings';

/** tests/format-cases.json: the texts that this formatting (front end, CLI) and the %checkpoint
 * magic's (kernel_checkpoint/_format.py, tests/plugin/test_format.py) must both give. */
interface ICases {
  now: string;
  bytes: [unknown, string][];
  durations: [unknown, string][];
  relative_times: [string, string][];
  tables: {
    description: string;
    current_id: string | null;
    checkpoints: Checkpoint[];
    lines: string[];
  }[];
  statuses: { description: string; status: SupervisorStatus; lines: string[] }[];
}

const cases: ICases = JSON.parse(
  fs.readFileSync(path.join(__dirname, '..', '..', 'tests', 'format-cases.json'), 'utf8')
);
const now = parseTimestamp(cases.now) as number;

describe('format, with the cases shared with Python', () => {
  it('reads the cases time', () => {
    expect(now).toBe(Date.parse(cases.now));
  });
  it.each(cases.bytes)('formatBytes(%j) is %j', (value, text) => {
    expect(formatBytes(value as number)).toBe(text);
  });
  it.each(cases.durations)('formatDuration(%j) is %j', (value, text) => {
    expect(formatDuration(value as number)).toBe(text);
  });
  it.each(cases.relative_times)('relativeTime(%j) is %j', (iso, text) => {
    expect(relativeTime(iso, now)).toBe(text);
  });
  it.each(cases.tables.map(c => [c.description, c] as const))('table: %s', (_, c) => {
    expect(checkpointTable(c.checkpoints, c.current_id, now).split('\n')).toEqual(c.lines);
  });
  it.each(cases.statuses.map(c => [c.description, c] as const))('status: %s', (_, c) => {
    expect(statusText(c.status).split('\n')).toEqual(c.lines);
  });
  it('parses timestamps as Date.parse does', () => {
    for (const [iso] of cases.relative_times) {
      const parsed = parseTimestamp(iso);
      if (parsed !== null) {
        expect(parsed).toBe(Date.parse(iso));
      }
    }
  });
});

describe('formatLabel', () => {
  it('expands placeholders', () => {
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

import type { Checkpoint, SupervisorStatus } from '../../../protocol/checkpoint-protocol';
import { ConnectError, RequestFailed } from '../kernel-client';
import { EXIT, exitCodeFor, exitCodeForError, UsageError } from '../client-commands';
import { KernelNotFound } from '../find-kernel';
import { checkpointRow } from '../../../src/format';
import { checkpointTable, jsonText, progressLine, statusText } from '../format';

const NOW = Date.parse('2025-03-01T12:00:00Z');

function checkpoint(overrides: Partial<Checkpoint> = {}): Checkpoint {
  return {
    format: 'kernel-checkpoint/1',
    id: 'ckpt-20250301T115500Z-aaaaaa',
    parent_id: null,
    label: 'first',
    created: '2025-03-01T11:55:00Z',
    engine: { name: 'criu', version: '4.2' },
    duration_ms: 1200,
    image_bytes: 25 * 1024 * 1024,
    kernel: { name: 'python3', display_name: 'Python 3', language: 'python' },
    notebook_path: null,
    state: { execution_count: 7, variables: [] },
    ...overrides
  };
}

// Sizes, times and the table's cells: tests/format-cases.json, shared with the magic's
// formatting (src/__tests__/format.spec.ts and tests/plugin/test_format.py read it).

describe('checkpoint table', () => {
  const first = checkpoint();
  const second = checkpoint({
    id: 'ckpt-20250301T115900Z-bbbbbb',
    parent_id: first.id,
    label: null,
    created: '2025-03-01T11:59:00Z',
    image_bytes: 2048,
    state: null
  });

  it('has one row per checkpoint with every column', () => {
    expect(checkpointRow(first, null, NOW)).toEqual([
      '',
      first.id,
      '-',
      'first',
      '5 min ago',
      '7',
      '25.0 MiB',
      'criu 4.2',
      ''
    ]);
    expect(checkpointRow(second, second.id, NOW)).toEqual([
      '*',
      second.id,
      first.id,
      '',
      '1 min ago',
      '-',
      '2.0 KiB',
      'criu 4.2',
      ''
    ]);
  });

  it('aligns columns, sorts oldest first and marks the current checkpoint', () => {
    const text = checkpointTable([second, first], second.id, NOW);
    const lines = text.split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[3]).toBe('');
    expect(lines[0].trim().split(/\s+/).join(' ')).toBe(
      'ID PARENT LABEL WHEN EXEC SIZE ENGINE VARIABLES'
    );
    expect(lines[1].startsWith(`   ${first.id}`)).toBe(true);
    expect(lines[2].startsWith(`*  ${second.id}  ${first.id}`)).toBe(true);
    // Columns line up: every column starts at the same offset on every line.
    const at = (line: string, word: string) => line.indexOf(word);
    expect(at(lines[1], '5 min ago')).toBe(at(lines[0], 'WHEN'));
    expect(at(lines[2], '1 min ago')).toBe(at(lines[0], 'WHEN'));
    expect(at(lines[1], 'criu 4.2')).toBe(at(lines[0], 'ENGINE'));
    expect(lines.every(line => line === line.trimEnd())).toBe(true);
  });

  it('says so when there are none', () => {
    expect(checkpointTable([], null, NOW)).toBe('No checkpoints.\n');
  });
});

describe('JSON and other text', () => {
  it('prints the protocol object itself, unchanged', () => {
    const c = checkpoint();
    expect(JSON.parse(jsonText(c))).toEqual(c);
    expect(JSON.parse(jsonText([c]))).toEqual([c]);
    expect(jsonText(c).endsWith('}\n')).toBe(true);
  });

  it('progress lines name action, stage and message', () => {
    expect(
      progressLine({ type: 'progress', request_id: 'r', action: 'checkpoint', stage: 'saving' })
    ).toBe('kernel-checkpoint: checkpoint: saving\n');
    expect(
      progressLine({
        type: 'progress',
        request_id: 'r',
        action: 'restore',
        stage: 'restoring',
        message: 'criu'
      })
    ).toBe('kernel-checkpoint: restore: restoring (criu)\n');
  });

  it('status text names the engine problem when there is one', () => {
    const status: SupervisorStatus = {
      protocol_version: '1.0',
      engine: { name: 'criu', version: 'unknown' },
      engine_ok: false,
      engine_problem: 'CRIU needs root.',
      current_id: null,
      kernel_name: 'python3',
      notebook_path: null,
      busy: 'checkpoint',
      plugin: true
    };
    const text = statusText(status);
    expect(text).toContain('engine:   criu unknown (unavailable)\n');
    expect(text).toContain('problem:  CRIU needs root.\n');
    expect(text).toContain('current:  -\n');
    expect(text).toContain('busy:     checkpoint\n');
  });
});

describe('exit codes', () => {
  it('are distinct for each documented failure', () => {
    const codes = Object.values(EXIT);
    expect(new Set(codes).size).toBe(codes.length);
    expect(EXIT.ok).toBe(0);
  });

  it.each([
    ['unknown_checkpoint', EXIT.unknownCheckpoint],
    ['busy', EXIT.busy],
    ['vetoed', EXIT.vetoed],
    ['engine_failed', EXIT.engineFailure],
    ['engine_unavailable', EXIT.engineFailure],
    ['no_space', EXIT.engineFailure],
    ['permission_denied', EXIT.engineFailure],
    ['corrupt_image', EXIT.engineFailure],
    ['foreign_image', EXIT.engineFailure],
    ['unsupported_protocol', EXIT.notCheckpointable],
    ['invalid_request', EXIT.failure]
  ])('%s -> %d', (code, exit) => {
    expect(exitCodeForError(code)).toBe(exit);
    expect(
      exitCodeFor(
        new RequestFailed({
          type: 'error',
          request_id: 'r',
          action: 'restore',
          error: { code: code as never, message: 'm' }
        })
      )
    ).toBe(exit);
  });

  it('maps failures before any request', () => {
    expect(exitCodeFor(new KernelNotFound('x'))).toBe(EXIT.noKernel);
    expect(exitCodeFor(new ConnectError('no_kernel', 'x'))).toBe(EXIT.noKernel);
    expect(exitCodeFor(new ConnectError('wrong_key', 'x'))).toBe(EXIT.wrongKey);
    expect(exitCodeFor(new ConnectError('not_checkpointable', 'x'))).toBe(EXIT.notCheckpointable);
    expect(exitCodeFor(new UsageError('x'))).toBe(EXIT.usage);
    expect(exitCodeFor(new Error('x'))).toBe(EXIT.failure);
  });
});

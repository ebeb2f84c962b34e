// What a failed CRIU run is reported as, from real CRIU 4.2 logs written on this machine
// (criu-logs/): a dump killed by SIGKILL, a dump into a full tmpfs, a restore killed at its
// start, and a restore refused because an open file changed size.

import { readFileSync } from 'node:fs';
import * as path from 'node:path';

import { criuFailure, realErrors } from '../criu-log';

const sample = (name: string) => readFileSync(path.join(__dirname, 'criu-logs', name), 'utf8');

describe("CRIU's log", () => {
  it('is never reported by its harmless rlimit line', () => {
    for (const name of ['dump-killed.log', 'dump-enospc.log', 'restore-bad-size.log']) {
      expect(sample(name)).toMatch(/rlimit: Can't setup RLIMIT_NOFILE/);
      expect(realErrors(sample(name)).join('\n')).not.toMatch(/rlimit/);
    }
  });

  it('a dump killed by a signal says so, not a line of its log', () => {
    const error = criuFailure(
      sample('dump-killed.log'),
      { signal: 'SIGKILL' },
      'snapshot the kernel'
    );
    expect(error.code).toBe('engine_failed');
    expect(error.message).toBe(
      'CRIU was killed by signal 9 (SIGKILL) while trying to snapshot the kernel.'
    );
    expect(error.detail).not.toMatch(/rlimit/);
  });

  it('a killed dump also gives the first real error of its log', () => {
    const error = criuFailure(
      sample('dump-enospc.log'),
      { signal: 'SIGTERM' },
      'snapshot the kernel'
    );
    expect(error.message).toBe(
      'CRIU was killed by signal 15 (SIGTERM) while trying to snapshot the kernel; the first ' +
        'error in its log: page-xfer: Unable to spice data: No space left on device.'
    );
  });

  it('a dump stopped for taking too long says so, not that it was killed', () => {
    const error = criuFailure(
      sample('dump-killed.log'),
      { signal: 'SIGKILL', timedOutAfterS: 600 },
      'snapshot the kernel'
    );
    expect(error.message).toBe('CRIU did not snapshot the kernel within 600 s and was stopped.');
  });

  it('a full disk is no_space, told by its first real error', () => {
    const error = criuFailure(sample('dump-enospc.log'), { signal: null }, 'snapshot the kernel');
    expect(error.code).toBe('no_space');
    expect(error.message).toBe(
      'The disk is full: CRIU could not snapshot the kernel (page-xfer: Unable to spice data: ' +
        'No space left on device).'
    );
    expect(error.detail?.split('\n')[0]).toBe(
      'page-xfer: Unable to spice data: No space left on device'
    );
    expect(error.detail).not.toMatch(/rlimit|Dumping FAILED/);
  });

  it('a failed restore names the cause, not "Restoring FAILED"', () => {
    const error = criuFailure(sample('restore-bad-size.log'), {}, 'restore the image');
    expect(error.code).toBe('engine_failed');
    expect(error.message).toBe(
      'CRIU could not restore the image: File tmp/bash_jobs.0/53cbbc51caba/stdout has bad size ' +
        '670 (expect 660)'
    );
  });

  it('a restore that ended with no error in its log says how it ended', () => {
    const log = sample('restore-killed.log');
    expect(realErrors(log)).toEqual([]);
    const error = criuFailure(log, { message: 'Killed' }, 'restore the image');
    expect(error.message).toBe('CRIU could not restore the image: Killed');
    expect(error.detail).toMatch(/LD: Got link 10/); // the last lines it wrote
  });

  it('an empty log and no message still make a sentence', () => {
    expect(criuFailure('', {}, 'restore the image').message).toBe(
      'CRIU could not restore the image: CRIU gave no reason'
    );
  });
});

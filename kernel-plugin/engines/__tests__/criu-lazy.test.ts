// Whether restores are lazy: the setting turns it off, and a CRIU that says userfaultfd does not
// work here gives a full restore with its reason (what the log and `doctor` show).

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { lazyRestoreMode } from '../criu-lazy';

/** A stand-in `criu` that prints `said` and exits with `code` for `criu check ...`. */
function fakeCriu(folder: string, said: string, code: number): string {
  const file = path.join(folder, `criu-${code}`);
  writeFileSync(file, `#!/bin/sh\necho '${said}' >&2\nexit ${code}\n`, { mode: 0o700 });
  return file;
}

describe('lazy restore mode', () => {
  let folder: string;
  beforeEach(() => {
    folder = mkdtempSync(path.join(os.tmpdir(), 'criu-lazy-test-'));
  });
  afterEach(() => rmSync(folder, { recursive: true, force: true }));

  it('is off when KERNEL_CHECKPOINT_LAZY=0, without asking CRIU', async () => {
    const criu = fakeCriu(folder, 'never asked', 1);
    const mode = await lazyRestoreMode(criu, { ...process.env, KERNEL_CHECKPOINT_LAZY: '0' });
    expect(mode).toEqual({ lazy: false, reason: 'KERNEL_CHECKPOINT_LAZY=0 turns it off' });
  });

  it('is full, saying why, when userfaultfd does not work here', async () => {
    const criu = fakeCriu(folder, 'UFFD is not supported', 1);
    const mode = await lazyRestoreMode(criu, process.env);
    expect(mode.lazy).toBe(false);
    expect(mode.reason).toBe(
      'userfaultfd does not work here (`criu check --feature uffd-noncoop`: UFFD is not supported)'
    );
  });

  it('is lazy when CRIU says uffd-noncoop is supported', async () => {
    const criu = fakeCriu(folder, 'uffd-noncoop is supported', 0);
    expect((await lazyRestoreMode(criu, process.env)).lazy).toBe(true);
  });
});

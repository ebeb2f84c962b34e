// The engines' shared tool runner: how a tool ended is reported as it happened, and a tool it
// starts dies with the process that started it.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  diesWithParent,
  diesWithParentSurely,
  errnoErrorCode,
  findExecutable,
  killedBy,
  messageErrorCode,
  runTool
} from '../tools';

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3));
  } catch {
    return false;
  }
}

describe('engine tools', () => {
  it('finds executables on PATH and not elsewhere', async () => {
    expect(await findExecutable('sh', { PATH: '/nonexistent:/bin:/usr/bin' })).toMatch(/\/sh$/);
    expect(await findExecutable('sh', { PATH: '/nonexistent' })).toBeNull();
  });

  it('reports an exit code and a killing signal', async () => {
    const env = process.env;
    expect(
      await runTool('/bin/sh', ['-c', 'echo out; exit 3'], { env, timeoutMs: 10000 })
    ).toMatchObject({
      code: 3,
      signal: null,
      stdout: 'out\n'
    });
    const killed = await runTool('/bin/sh', ['-c', 'kill -9 $$'], { env, timeoutMs: 10000 });
    expect(killed).toMatchObject({ code: null, signal: 'SIGKILL', timedOut: false });
    const slow = await runTool('/bin/sh', ['-c', 'exec sleep 10'], { env, timeoutMs: 100 });
    expect(slow).toMatchObject({ signal: 'SIGKILL', timedOut: true });
    expect(killedBy(killed.signal)).toBe('killed by signal 9 (SIGKILL)');
    expect(killedBy(null)).toBeNull();
  });

  it('ends with its tool, even when a stopped copy of it holds its output', async () => {
    // What a `criu dump` killed mid-dump can leave: a forked copy of itself, stopped, with the
    // tool's stdout and stderr (docs/engines.md). Waiting for the pipes to close waited until
    // the dump's timeout (10 min), and the copy stayed.
    const began = Date.now();
    const result = await runTool(
      '/bin/sh',
      ['-c', "sh -c 'echo $$; kill -STOP $$' & sleep 0.2; kill -9 $$"],
      { env: process.env, timeoutMs: 20000 }
    );
    expect(result).toMatchObject({ code: null, signal: 'SIGKILL', timedOut: false });
    expect(Date.now() - began).toBeLessThan(5000);
    const copy = Number(result.stdout.trim());
    expect(copy).toBeGreaterThan(0);
    const deadline = Date.now() + 2000;
    while (alive(copy) && Date.now() < deadline) {
      await new Promise(resolve => setTimeout(resolve, 10));
    }
    expect(alive(copy)).toBe(false);
  });

  it('a tool dies with its parent, even by kill -9', async () => {
    // A parent shell starts the tool the way the engines do, then is killed.
    const [wrapper, ...args] = diesWithParent(['sleep', '60']);
    const parent = spawn('/bin/sh', ['-c', `${wrapper} ${args.join(' ')} & echo $!; wait`], {
      stdio: ['ignore', 'pipe', 'ignore']
    });
    const closed = new Promise(resolve => parent.once('close', resolve));
    const pid = await new Promise<number>(resolve =>
      parent.stdout.once('data', chunk => resolve(Number(String(chunk).trim())))
    );
    // Once it runs `sleep`, setpriv has set the signal (before that, from its fork to its
    // prctl, a parent's death goes unnoticed: docs/engines.md).
    while (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'sleep') {
      await new Promise(resolve => setTimeout(resolve, 1));
    }
    parent.kill('SIGKILL');
    const deadline = Date.now() + 2000;
    while (alive(pid) && Date.now() < deadline) {
      await new Promise(resolve => setTimeout(resolve, 10));
    }
    expect(alive(pid)).toBe(false);
    await closed;
  });

  it('a tool whose parent dies while it starts never runs', async () => {
    // The window setpriv leaves (a parent that dies between the fork and the prctl sends no
    // signal), made wide: the child waits 0.3 s before it execs setpriv, and its parent is
    // killed meanwhile.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'kc-dies-'));
    try {
      const marker = path.join(dir, 'ran');
      // The child's "$1" is its parent's PID.
      const script = `sleep 0.3; exec ${diesWithParentSurely(['touch', marker], 'PARENT')
        .map(word => (word === 'PARENT' ? '"$1"' : `'${word}'`))
        .join(' ')}`;
      // Its parent alive, it runs.
      execFileSync('/bin/sh', ['-c', `/bin/sh -c "$1" sh "$$" & wait`, 'sh', script]);
      const ranUnderParent = existsSync(marker);
      rmSync(marker, { force: true });
      const parent = spawn(
        '/bin/sh',
        ['-c', `/bin/sh -c "$1" sh "$$" & echo $!; wait`, 'sh', script],
        {
          stdio: ['ignore', 'pipe', 'ignore']
        }
      );
      const child = await new Promise<number>(resolve =>
        parent.stdout.once('data', chunk => resolve(Number(String(chunk).trim())))
      );
      parent.kill('SIGKILL');
      const deadline = Date.now() + 3000;
      while (alive(child) && Date.now() < deadline) {
        await new Promise(resolve => setTimeout(resolve, 10));
      }
      expect(ranUnderParent).toBe(true);
      expect(alive(child)).toBe(false);
      expect(existsSync(marker)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('maps errnos and messages onto error codes', () => {
    expect(errnoErrorCode('ENOSPC')).toBe('no_space');
    expect(errnoErrorCode('EDQUOT')).toBe('no_space');
    expect(errnoErrorCode('EROFS')).toBe('permission_denied');
    expect(errnoErrorCode('ENOENT')).toBeNull();
    expect(messageErrorCode('bfd: Error flushing image: No space left on device')).toBe('no_space');
    expect(messageErrorCode("Can't open file: Permission denied")).toBe('permission_denied');
    expect(messageErrorCode('has bad size 670 (expect 660)')).toBeNull();
  });

  it('setpriv is installed here (util-linux)', () => {
    expect(execFileSync('setpriv', ['--version'], { encoding: 'utf8' })).toMatch(/util-linux/);
  });
});

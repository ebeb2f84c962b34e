import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  findConnectionFile,
  jupyterDataDir,
  jupyterRuntimeDir,
  KernelNotFound,
  kernelFiles
} from '../find-kernel';

describe('jupyterRuntimeDir (jupyter_core.paths rules)', () => {
  it('uses JUPYTER_RUNTIME_DIR first', () => {
    expect(
      jupyterRuntimeDir({ JUPYTER_RUNTIME_DIR: '/r', JUPYTER_DATA_DIR: '/d' }, 'linux', '/home/u')
    ).toBe('/r');
  });

  it('else <JUPYTER_DATA_DIR>/runtime', () => {
    expect(jupyterRuntimeDir({ JUPYTER_DATA_DIR: '/d' }, 'linux', '/home/u')).toBe('/d/runtime');
  });

  it('else $XDG_DATA_HOME/jupyter/runtime, never $XDG_RUNTIME_DIR', () => {
    expect(
      jupyterRuntimeDir({ XDG_DATA_HOME: '/x', XDG_RUNTIME_DIR: '/run/user/1' }, 'linux', '/h')
    ).toBe('/x/jupyter/runtime');
  });

  it('else ~/.local/share/jupyter/runtime; empty variables count as unset', () => {
    expect(
      jupyterRuntimeDir({ JUPYTER_RUNTIME_DIR: '', XDG_DATA_HOME: '' }, 'linux', '/home/u')
    ).toBe('/home/u/.local/share/jupyter/runtime');
  });

  it('~/Library/Jupyter on macOS', () => {
    expect(jupyterDataDir({}, 'darwin', '/Users/u')).toBe('/Users/u/Library/Jupyter');
  });
});

describe('findConnectionFile', () => {
  let root: string;
  let runtime: string;
  let cwd: string;

  const write = (dir: string, name: string, ageSeconds: number): string => {
    const file = path.join(dir, name);
    writeFileSync(file, '{}');
    const when = Date.now() / 1000 - ageSeconds;
    utimesSync(file, when, when);
    return file;
  };

  beforeEach(() => {
    root = mkdtempSync(path.join(os.tmpdir(), 'find-kernel-'));
    runtime = path.join(root, 'runtime');
    cwd = path.join(root, 'cwd');
    mkdirSync(runtime);
    mkdirSync(cwd);
  });

  afterEach(() => rmSync(root, { recursive: true, force: true }));

  const find = (existing?: string) => findConnectionFile(existing, { runtimeDir: runtime, cwd });

  it('defaults to the most recently modified kernel-*.json of the runtime folder', () => {
    write(runtime, 'kernel-old.json', 300);
    const newest = write(runtime, 'kernel-new.json', 10);
    write(runtime, 'kernel-middle.json', 100);
    // Not kernels: a server's file and other names, even newer ones, are ignored.
    write(runtime, 'jpserver-1.json', 0);
    write(runtime, 'notebook_cookie_secret', 0);
    expect(find()).toBe(newest);
    expect(kernelFiles(runtime).map(f => path.basename(f))).toEqual([
      'kernel-new.json',
      'kernel-middle.json',
      'kernel-old.json'
    ]);
  });

  it('reads JUPYTER_RUNTIME_DIR from the environment', () => {
    const newest = write(runtime, 'kernel-a.json', 0);
    expect(findConnectionFile(undefined, { env: { JUPYTER_RUNTIME_DIR: runtime }, cwd })).toBe(
      newest
    );
  });

  it('throws KernelNotFound naming the folder when there is no kernel', () => {
    write(runtime, 'jpserver-1.json', 0);
    expect(() => find()).toThrow(KernelNotFound);
    expect(() => find()).toThrow(runtime);
    expect(() =>
      findConnectionFile(undefined, { runtimeDir: path.join(root, 'missing'), cwd })
    ).toThrow(KernelNotFound);
  });

  it('takes a path as given, absolute or relative to the current folder', () => {
    const elsewhere = write(root, 'my-connection.json', 0);
    expect(find(elsewhere)).toBe(elsewhere);
    const local = write(cwd, 'conn.json', 0);
    expect(find('conn.json')).toBe(local);
  });

  it('finds a file name in the runtime folder', () => {
    const file = write(runtime, 'kernel-1234.json', 0);
    expect(find('kernel-1234.json')).toBe(file);
  });

  it('finds a kernel id as kernel-ID.json, preferred over newer partial matches', () => {
    const exact = write(runtime, 'kernel-abc.json', 500);
    write(runtime, 'kernel-abcdef.json', 0);
    expect(find('abc')).toBe(exact);
  });

  it('finds part of an id: the newest kernel-*ID*.json', () => {
    write(runtime, 'kernel-1111-aaaa.json', 50);
    const newer = write(runtime, 'kernel-2222-aaaa.json', 5);
    write(runtime, 'kernel-3333-bbbb.json', 0);
    expect(find('aaaa')).toBe(newer);
    expect(find('3333')).toBe(path.join(runtime, 'kernel-3333-bbbb.json'));
  });

  it('throws KernelNotFound for a missing path or an id that matches nothing', () => {
    write(runtime, 'kernel-abc.json', 0);
    expect(() => find(path.join(root, 'nope', 'kernel-abc.json'))).toThrow(KernelNotFound);
    expect(() => find('zzz')).toThrow(/no connection file matches "zzz"/);
  });
});

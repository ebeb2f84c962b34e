// Finding a kernel's connection file the way `jupyter console --existing` does
// (jupyter_client.find_connection_file): a path as given, else a file of that name in the current
// folder or Jupyter's runtime folder, else the most recent kernel-*.json whose name contains it.
// Without an argument: the most recently modified kernel-*.json in the runtime folder.

import { readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** No connection file matched: the CLI's "no kernel found". */
export class KernelNotFound extends Error {}

function isSet(value: string | undefined): value is string {
  return value !== undefined && value !== '';
}

/**
 * Jupyter's runtime folder, by jupyter_core.paths.jupyter_runtime_dir's rules:
 * $JUPYTER_RUNTIME_DIR, else <data dir>/runtime, where the data dir is $JUPYTER_DATA_DIR, else
 * ~/Library/Jupyter on macOS, else $XDG_DATA_HOME/jupyter or ~/.local/share/jupyter.
 * (jupyter_core no longer uses $XDG_RUNTIME_DIR; with JUPYTER_PLATFORM_DIRS set, platformdirs
 * gives the same folder on Linux.)
 */
export function jupyterRuntimeDir(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
  home: string = os.homedir()
): string {
  if (isSet(env.JUPYTER_RUNTIME_DIR)) {
    return env.JUPYTER_RUNTIME_DIR;
  }
  return path.join(jupyterDataDir(env, platform, home), 'runtime');
}

export function jupyterDataDir(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
  home: string = os.homedir()
): string {
  if (isSet(env.JUPYTER_DATA_DIR)) {
    return env.JUPYTER_DATA_DIR;
  }
  if (platform === 'darwin') {
    return path.join(home, 'Library', 'Jupyter');
  }
  if (platform === 'win32' && isSet(env.APPDATA)) {
    return path.join(env.APPDATA, 'jupyter');
  }
  const xdg = isSet(env.XDG_DATA_HOME) ? env.XDG_DATA_HOME : path.join(home, '.local', 'share');
  return path.join(xdg, 'jupyter');
}

export interface FindOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Overrides the runtime folder (default: jupyterRuntimeDir(env)). */
  runtimeDir?: string;
}

function isFile(file: string): boolean {
  try {
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/** kernel-*.json files of a folder, newest first (by modification time). */
export function kernelFiles(dir: string, contains = ''): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter(name => name.startsWith('kernel-') && name.endsWith('.json') && name.includes(contains))
    .map(name => path.join(dir, name))
    .filter(isFile)
    .map(file => ({ file, mtime: statSync(file).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime || b.file.localeCompare(a.file))
    .map(entry => entry.file);
}

/**
 * The connection file for `--existing FILE|ID`, or for no argument the newest kernel-*.json in
 * the runtime folder. Throws KernelNotFound, saying where it looked.
 */
export function findConnectionFile(existing?: string, options: FindOptions = {}): string {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const runtimeDir = options.runtimeDir ?? jupyterRuntimeDir(env);
  if (existing === undefined || existing === '') {
    const newest = kernelFiles(runtimeDir)[0];
    if (!newest) {
      throw new KernelNotFound(
        `No kernel found: there is no kernel-*.json connection file in Jupyter's runtime folder ${runtimeDir}. ` +
          'Start a kernel, or name its connection file with --existing FILE.'
      );
    }
    return newest;
  }
  const folders = [cwd, runtimeDir];
  // An explicit path, or a file of that name in the current or the runtime folder.
  for (const folder of folders) {
    const candidate = path.resolve(folder, existing);
    if (isFile(candidate)) {
      return candidate;
    }
  }
  if (existing.includes('/') || existing.includes(path.sep)) {
    throw new KernelNotFound(`No kernel found: the connection file ${existing} does not exist.`);
  }
  // A kernel id (or part of one): kernel-<id>.json, else the newest kernel-*<id>*.json.
  for (const folder of folders) {
    const exact = path.join(folder, `kernel-${existing}.json`);
    if (isFile(exact)) {
      return exact;
    }
  }
  const matches = folders
    .flatMap(folder => kernelFiles(folder, existing))
    .map(file => ({ file, mtime: statSync(file).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime);
  if (matches.length > 0) {
    return matches[0].file;
  }
  throw new KernelNotFound(
    `No kernel found: no connection file matches ${JSON.stringify(existing)} in ${cwd} or in ` +
      `Jupyter's runtime folder ${runtimeDir}.`
  );
}

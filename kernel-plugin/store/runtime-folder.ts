// The runtime folder: where every lineage's ipc folder (the kernel's sockets and private
// connection file) lives. It must be the user's alone (see ownership.ts) and short: a unix
// socket's path holds at most 107 bytes.

import { statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ensurePrivateFolder } from './ownership';

/**
 * Longest runtime folder taken from $XDG_RUNTIME_DIR: the longest socket below it,
 * `<folder>/<lineage>/kernel-5`, adds 22 bytes to it.
 */
const MAX_RUNTIME_FOLDER = 107 - 22;

/**
 * KERNEL_CHECKPOINT_RUNTIME_DIR when set; else `$XDG_RUNTIME_DIR/kernel-checkpoint` (the
 * per-user folder the system makes private and removes at logout) when that folder exists and is
 * short enough; else `$TMPDIR/kernel-checkpoint-<uid>`.
 */
export function runtimeFolder(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KERNEL_CHECKPOINT_RUNTIME_DIR) {
    return env.KERNEL_CHECKPOINT_RUNTIME_DIR;
  }
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg) && isFolder(xdg)) {
    const folder = path.join(xdg, 'kernel-checkpoint');
    if (folder.length <= MAX_RUNTIME_FOLDER) {
      return folder;
    }
  }
  return path.join(os.tmpdir(), `kernel-checkpoint-${process.getuid?.() ?? 0}`);
}

/** Creates the runtime folder (0700) or checks the one there; throws UnsafeFolderError. */
export function ensureRuntimeFolder(folder: string): Promise<void> {
  return ensurePrivateFolder(folder, 'runtime folder');
}

function isFolder(folder: string): boolean {
  try {
    return statSync(folder).isDirectory();
  } catch {
    return false;
  }
}

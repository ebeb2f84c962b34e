// What the kill -9 tests share: node code run in a child process, killed once a condition holds.

import { spawn } from 'node:child_process';

/**
 * Runs `code` (node -e) with `env` added; resolves with the signal that ended it, or "exit N".
 * When `killWhen` is given, it is polled every millisecond and the child is killed (-9) once it
 * holds.
 */
export function runNode(
  code: string,
  env: Record<string, string>,
  killWhen?: () => Promise<boolean>,
  stdout: 'inherit' | 'ignore' = 'inherit'
): Promise<string> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['-e', code], {
      env: { ...process.env, ...env },
      stdio: ['ignore', stdout, 'inherit']
    });
    let polling = Boolean(killWhen);
    const poll = async () => {
      while (polling) {
        if (await killWhen!()) {
          proc.kill('SIGKILL');
          return;
        }
        await new Promise(wake => setTimeout(wake, 1));
      }
    };
    proc.on('error', reject);
    proc.on('exit', (status, signal) => {
      polling = false;
      resolve(signal ?? `exit ${status}`);
    });
    void poll();
  });
}

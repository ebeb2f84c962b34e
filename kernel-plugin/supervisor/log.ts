// The supervisor's log: one line per event on stderr, which Jupyter shows in the server's log.
// KERNEL_CHECKPOINT_LOG=debug shows more.

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 } as const;
type Level = keyof typeof LEVELS;

const threshold = LEVELS[(process.env.KERNEL_CHECKPOINT_LOG as Level) ?? 'info'] ?? LEVELS.info;

function write(level: Level, message: string): void {
  if (LEVELS[level] >= threshold) {
    process.stderr.write(`[kernel-checkpoint ${new Date().toISOString()} ${level}] ${message}\n`);
  }
}

export const log = {
  debug: (message: string) => write('debug', message),
  info: (message: string) => write('info', message),
  warn: (message: string) => write('warn', message),
  error: (message: string) => write('error', message)
};

// The supervisor's log: one line per event, and the kernel's own output, into one sink. The
// command line (cli/run.ts) points the sink at stderr, which Jupyter shows in the server's log;
// until then nothing is written (a test gives its own sink, or none). KERNEL_CHECKPOINT_LOG=debug
// (read by the command line) shows more.

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 } as const;
export type LogLevel = keyof typeof LEVELS;

/** Where log lines and the kernel's output go. */
export interface LogSink {
  write(chunk: string | Buffer): void;
}

let sink: LogSink | null = null;
let threshold: number = LEVELS.info;

/** Sends the log (and the kernel's output) to `target`, from `level` up; null silences it. */
export function setLogSink(target: LogSink | null, level?: string): void {
  sink = target;
  threshold = LEVELS[level as LogLevel] ?? LEVELS.info;
}

function write(level: LogLevel, message: string): void {
  if (sink && LEVELS[level] >= threshold) {
    sink.write(`[kernel-checkpoint ${new Date().toISOString()} ${level}] ${message}\n`);
  }
}

export const log = {
  debug: (message: string) => write('debug', message),
  info: (message: string) => write('info', message),
  warn: (message: string) => write('warn', message),
  error: (message: string) => write('error', message),
  /** The kernel process's stdout and stderr, as they come. */
  kernelOutput: (chunk: Buffer) => sink?.write(chunk)
};

// What the CLI does when whoever reads its output goes away (`kernel-checkpoint doctor | head
// -1`): a Node stream then emits EPIPE as an error, and an unhandled one ends the process with a
// stack trace. A client verb ends quietly instead, as Unix tools do; the supervisor (`run`) goes
// on without its log, since its kernel must not die because a log reader did.

/** The conventional status of a process ended by SIGPIPE (128 + 13), as `yes | head -1` gives. */
export const CLOSED_PIPE_STATUS = 141;

/** Makes EPIPE on stdout or stderr end the process quietly (`exit`), or be ignored (`ignore`). */
export function onClosedPipe(what: 'exit' | 'ignore'): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE') {
        throw error;
      }
      if (what === 'exit') {
        process.exit(CLOSED_PIPE_STATUS);
      }
    });
  }
}

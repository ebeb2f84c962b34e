// Verbs that talk to a running kernel over ZeroMQ (checkpoint, restore, list, delete, label,
// status): find its connection file, check the key and that it answers (the supervisor's
// signed iopub welcome and its heartbeat, with a timeout), open the kernel_checkpoint comm, send
// one request, print the answer, exit with a documented code.

import { readFileSync } from 'node:fs';

import { Command, CommanderError, Option } from 'commander';

import type { Action, ErrorCode, Reply, Request } from '../../protocol/checkpoint-protocol';
import type { ConnectionInfo } from '../supervisor/wire';
import { findConnectionFile, KernelNotFound } from './find-kernel';
import { checkpointTable, jsonText, progressLine, statusText } from './format';
import { ConnectError, KernelClient, RequestFailed } from './kernel-client';

/** Exit codes of the client verbs (also in `kernel-checkpoint --help` and the README). */
export const EXIT = {
  ok: 0,
  /** Anything unexpected (a bug, a lost connection mid-request, an invalid request). */
  failure: 1,
  usage: 2,
  noKernel: 3,
  notCheckpointable: 4,
  engineFailure: 5,
  unknownCheckpoint: 6,
  busy: 7,
  wrongKey: 8,
  vetoed: 9
} as const;

export const EXIT_CODES_HELP = `
Exit codes (checkpoint, restore, list, delete, label, status):
  0  ok
  1  unexpected failure (e.g. the kernel stopped in the middle of a request: its connection
     closed or its heartbeat fell silent)
  2  usage error (unknown verb or option, missing argument)
  3  no kernel found (no connection file, or nothing answers at its ports)
  4  kernel not checkpointable (not started under kernel-checkpoint: no answer to the
     kernel_checkpoint comm, or it speaks another protocol version)
  5  engine failure (engine_failed, engine_unavailable, no_space, permission_denied,
     corrupt_image, foreign_image, kernel_not_running)
  6  unknown checkpoint id
  7  busy: another checkpoint or restore of this kernel is under way
  8  wrong key: the kernel's messages do not verify with the connection file's key, or it
     ignores our signed messages while its heartbeat answers
  9  vetoed by a pre-checkpoint hook in the kernel
  141  its output's reader went away (\`... | head -1\`): it ends quietly, as a Unix tool
       ended by SIGPIPE does
`;

/** The exit code for an ErrorReply's code. */
export function exitCodeForError(code: ErrorCode | string): number {
  switch (code) {
    case 'unknown_checkpoint':
      return EXIT.unknownCheckpoint;
    case 'busy':
      return EXIT.busy;
    case 'vetoed':
      return EXIT.vetoed;
    case 'unsupported_protocol':
      return EXIT.notCheckpointable;
    case 'engine_failed':
    case 'engine_unavailable':
    case 'no_space':
    case 'permission_denied':
    case 'corrupt_image':
    case 'foreign_image':
    case 'kernel_not_running':
      return EXIT.engineFailure;
    default:
      return EXIT.failure;
  }
}

/** The exit code for anything a client verb throws. */
export function exitCodeFor(error: unknown): number {
  if (error instanceof KernelNotFound) {
    return EXIT.noKernel;
  }
  if (error instanceof UsageError) {
    return EXIT.usage;
  }
  if (error instanceof ConnectError) {
    switch (error.kind) {
      case 'no_kernel':
        return EXIT.noKernel;
      case 'wrong_key':
        return EXIT.wrongKey;
      case 'not_checkpointable':
        return EXIT.notCheckpointable;
      default:
        return EXIT.failure;
    }
  }
  if (error instanceof RequestFailed) {
    return exitCodeForError(error.reply.error.code);
  }
  return EXIT.failure;
}

export class UsageError extends Error {}

interface CommonOptions {
  existing?: string | boolean;
  json?: boolean;
  quiet?: boolean;
  timeout: string;
}

/** Reads a connection file; a missing or unreadable one is "no kernel found". */
export function readConnection(file: string): ConnectionInfo {
  let info: ConnectionInfo;
  try {
    info = JSON.parse(readFileSync(file, 'utf8')) as ConnectionInfo;
  } catch (error) {
    throw new KernelNotFound(
      `No kernel found: cannot read the connection file ${file}: ${(error as Error).message}`
    );
  }
  for (const field of ['shell_port', 'iopub_port', 'hb_port', 'ip', 'key'] as const) {
    if (info[field] === undefined) {
      throw new KernelNotFound(`No kernel found: ${file} is not a connection file (no ${field}).`);
    }
  }
  info.transport ??= 'tcp';
  info.signature_scheme ??= 'hmac-sha256';
  return info;
}

function seconds(value: string, name: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed <= 0) {
    throw new UsageError(
      `${name} must be a positive number of seconds, not ${JSON.stringify(value)}`
    );
  }
  return parsed * 1000;
}

/** How long a request may run once sent (a checkpoint of a big kernel takes a while). */
const REQUEST_TIMEOUT_MS: Record<Action, number> = {
  checkpoint: 3600_000,
  restore: 3600_000,
  delete: 300_000,
  list: 120_000,
  label: 120_000,
  status: 60_000,
  fork: 3600_000,
  summary: 60_000,
  bisect: 3600_000
};

/**
 * Connects to the kernel, sends one request over the comm and hands the Reply to `show`.
 * Returns the exit code; every failure is written to stderr as one clear sentence.
 */
export async function runRequest(
  action: Action,
  fields: Omit<Request, 'request_id' | 'action'>,
  options: CommonOptions,
  show: (reply: Reply) => void
): Promise<number> {
  let client: KernelClient | null = null;
  try {
    const timeoutMs = seconds(options.timeout, '--timeout');
    const existing = typeof options.existing === 'string' ? options.existing : undefined;
    const file = findConnectionFile(existing);
    const info = readConnection(file);
    client = new KernelClient(info, { clientName: 'cli', connectionFile: file });
    client.connect();
    await client.handshake(timeoutMs);
    await client.openComm(timeoutMs);
    const reply = await client.request(
      action,
      fields,
      progress => {
        if (!options.quiet) {
          process.stderr.write(progressLine(progress));
        }
      },
      REQUEST_TIMEOUT_MS[action]
    );
    show(reply);
    return EXIT.ok;
  } catch (error) {
    const code = exitCodeFor(error);
    let text = error instanceof Error ? error.message : String(error);
    if (error instanceof RequestFailed) {
      text = `${action} failed (${error.reply.error.code}): ${error.reply.error.message}`;
      if (error.reply.error.detail && !options.quiet) {
        text += `\n${error.reply.error.detail.trimEnd()}`;
      }
    }
    process.stderr.write(`kernel-checkpoint: ${text}\n`);
    return code;
  } finally {
    await client?.close();
  }
}

function commonOptions(command: Command): Command {
  return command
    .option(
      '--existing [FILE|ID]',
      "the kernel's connection file, or its id (kernel-ID.json in Jupyter's runtime folder); " +
        'default: the most recently started kernel'
    )
    .option('--timeout <seconds>', 'how long to wait for the kernel to answer', '10')
    .option('-q, --quiet', 'no progress lines on stderr')
    .addHelpText('after', EXIT_CODES_HELP);
}

/** Ends the process with `code` once output is flushed (a stray handle cannot keep it alive). */
function finish(code: number): void {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 3000).unref();
}

/** Usage errors exit with 2, help with 0: the documented codes, not commander's 1. */
function usageExits(command: Command): Command {
  return command.exitOverride((error: CommanderError) => {
    const ok =
      error.code === 'commander.helpDisplayed' ||
      error.code === 'commander.help' ||
      error.code === 'commander.version';
    process.exit(ok ? EXIT.ok : EXIT.usage);
  });
}

export function registerClientCommands(program: Command): void {
  usageExits(program);
  program.addHelpText('after', EXIT_CODES_HELP);

  const add = (name: string, description: string): Command =>
    usageExits(commonOptions(program.command(name).description(description)));

  add('checkpoint', 'Checkpoint a running kernel; prints the new checkpoint.')
    .option('-m, --label <LABEL>', 'label of the checkpoint')
    .option('--notebook <PATH>', 'notebook path to record in the manifest')
    .option('--json', "print the protocol's Checkpoint object as JSON")
    .action(async (options: CommonOptions & { label?: string; notebook?: string }) => {
      const fields: Omit<Request, 'request_id' | 'action'> = { label: options.label ?? null };
      if (options.notebook) {
        fields.notebook_path = options.notebook;
      }
      finish(
        await runRequest('checkpoint', fields, options, reply => {
          process.stdout.write(
            options.json
              ? jsonText(reply.checkpoint)
              : checkpointTable(reply.checkpoint ? [reply.checkpoint] : [], reply.current_id)
          );
        })
      );
    });

  add('restore', 'Restore the kernel from a checkpoint (its id, as `list` shows it).')
    .argument('<ID>', 'checkpoint id')
    .option('--json', "print the protocol's Checkpoint object as JSON")
    .action(async (id: string, options: CommonOptions) => {
      finish(
        await runRequest('restore', { checkpoint_id: id }, options, reply => {
          process.stdout.write(
            options.json
              ? jsonText(reply.checkpoint)
              : `Restored ${reply.checkpoint?.id ?? id}${reply.checkpoint?.label ? ` (${reply.checkpoint.label})` : ''}.\n`
          );
        })
      );
    });

  add('list', "List the checkpoints of the kernel's notebook and lineage (current one marked *).")
    .option('--all', 'every checkpoint in the store')
    .option('--json', "print the protocol's Checkpoint objects as a JSON array")
    .action(async (options: CommonOptions & { all?: boolean }) => {
      finish(
        await runRequest('list', { scope: options.all ? 'all' : 'session' }, options, reply => {
          process.stdout.write(
            options.json
              ? jsonText(reply.checkpoints ?? [])
              : checkpointTable(reply.checkpoints ?? [], reply.current_id)
          );
        })
      );
    });

  add('delete', 'Delete a checkpoint image from the store.')
    .argument('<ID>', 'checkpoint id')
    .option('--json', "print the deleted checkpoint's Checkpoint object as JSON")
    .action(async (id: string, options: CommonOptions) => {
      finish(
        await runRequest('delete', { checkpoint_id: id }, options, reply => {
          process.stdout.write(options.json ? jsonText(reply.checkpoint) : `Deleted ${id}.\n`);
        })
      );
    });

  add('label', 'Set the label of a checkpoint (an empty TEXT removes it).')
    .argument('<ID>', 'checkpoint id')
    .argument('<TEXT>', 'the new label')
    .option('--json', "print the protocol's Checkpoint object as JSON")
    .action(async (id: string, text: string, options: CommonOptions) => {
      finish(
        await runRequest(
          'label',
          { checkpoint_id: id, label: text === '' ? null : text },
          options,
          reply => {
            process.stdout.write(
              options.json
                ? jsonText(reply.checkpoint)
                : checkpointTable(reply.checkpoint ? [reply.checkpoint] : [], reply.current_id)
            );
          }
        )
      );
    });

  add(
    'fork',
    'Start a new standalone kernel from a checkpoint, beside the running one; prints its ' +
      'connection file (`jupyter console --existing FILE`); it ends on a shutdown_request.'
  )
    .argument('<ID>', 'checkpoint id')
    .option('--json', 'print {"connection_file": ..., "checkpoint": <the Checkpoint>} as JSON')
    .action(async (id: string, options: CommonOptions) => {
      finish(
        await runRequest('fork', { checkpoint_id: id }, options, reply => {
          process.stdout.write(
            options.json
              ? jsonText({ connection_file: reply.connection_file, checkpoint: reply.checkpoint })
              : `${reply.connection_file}\n`
          );
        })
      );
    });

  add('status', "Show the kernel supervisor's status: engine, current checkpoint, busy.")
    .addOption(new Option('--json', "print the protocol's SupervisorStatus object as JSON"))
    .action(async (options: CommonOptions) => {
      finish(
        await runRequest('status', {}, options, reply => {
          if (!reply.status) {
            throw new Error('the kernel sent no status');
          }
          process.stdout.write(options.json ? jsonText(reply.status) : statusText(reply.status));
        })
      );
    });
}

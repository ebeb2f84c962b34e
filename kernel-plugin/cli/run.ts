// `kernel-checkpoint run`: the process a checkpointable kernelspec launches.

import { closeSync, rmSync, writeSync } from 'node:fs';

import type { Command } from 'commander';

import { chooseEngine } from '../engines';
import { chunkingOptionsFromEnv } from '../store/chunked-images';
import { ImageStore, defaultStoreRoot } from '../store/store';
import type { ForkReadiness } from '../supervisor/fork-flow';
import { log, setLogSink } from '../supervisor/log';
import { asRequestError } from '../supervisor/request-errors';
import { readConnectionFile, Supervisor } from '../supervisor/supervisor';

/**
 * The process that launched the supervisor: the one the `kernel-checkpoint` launcher (Python,
 * which replaces itself with Node) was started by, which it names in LAUNCHED_BY_SETTING; else
 * Node's parent when this module loads. Not read later: a launcher that dies while the
 * supervisor starts (its engines are probed first, ~0.5 s) would leave it reading PID 1 as its
 * parent, and never stopping (seen: supervisors under PID 1 for 12 s and more after the fault
 * suite was stopped).
 */
const LAUNCHED_BY_SETTING = 'KERNEL_CHECKPOINT_LAUNCHED_BY';
const launchedBy = Number(process.env[LAUNCHED_BY_SETTING]) || process.ppid;
delete process.env[LAUNCHED_BY_SETTING];
/** How often the parent is checked: every process it leaves must go within 2 s. */
const PARENT_CHECK_MS = 200;
/** How long stopping may take once the launcher is gone, before the supervisor just exits. */
const ORPHAN_STOP_MS = 1500;

interface RunOptions {
  connectionFile: string;
  engine: string;
  store?: string;
  compression?: string;
  kernelName: string;
  displayName?: string;
  language: string;
  fromImage?: string;
  readyFd?: string;
}

/** Tells whoever started a fork (fork-flow.ts) how its start went, once, and closes the pipe. */
function tellReadiness(fd: string | undefined, readiness: ForkReadiness): void {
  if (fd === undefined) {
    return;
  }
  try {
    writeSync(Number(fd), `${JSON.stringify(readiness)}\n`);
    closeSync(Number(fd));
  } catch {
    // Whoever started it is gone: nobody to tell.
  }
}

export function registerRunCommand(program: Command): void {
  program
    .command('run')
    .description(
      'Run a kernel under the supervisor (this is what a checkpointable kernelspec launches).'
    )
    .requiredOption('-f, --connection-file <file>', 'the connection file Jupyter gave')
    .option(
      '--engine <name>',
      'checkpoint engine: auto, criu or dmtcp (plain: no snapshots; fake: for tests only)',
      process.env.KERNEL_CHECKPOINT_ENGINE ?? 'auto'
    )
    .option(
      '--store <dir>',
      'folder of the image store (default: $KERNEL_CHECKPOINT_STORE or Jupyter data dir)'
    )
    .option(
      '--compression <codec>',
      'how new chunks of images are stored: zstd or none (default: $KERNEL_CHECKPOINT_COMPRESSION or zstd)'
    )
    .option(
      '--kernel-name <name>',
      'name of this kernelspec, recorded in each checkpoint',
      'python3-checkpoint'
    )
    .option('--display-name <name>', 'display name of the kernel, recorded in each checkpoint')
    .option('--language <language>', 'language of the kernel', 'python')
    .option(
      '--from-image <ID>',
      'start the kernel from checkpoint ID, beside any other kernel of that image (a fork); it ' +
        'runs until a shutdown_request, whoever started it'
    )
    .option('--ready-fd <fd>', 'write one JSON line on this fd once the kernel runs (forks)')
    .argument('[argv...]', "the wrapped kernel's command line, after --")
    .action(async (argv: string[], options: RunOptions) => {
      if (!options.fromImage && argv.length === 0) {
        throw new Error("run needs the wrapped kernel's command line, after --");
      }
      // The supervisor's log and the kernel's output go to stderr: Jupyter shows it.
      setLogSink(process.stderr, process.env.KERNEL_CHECKPOINT_LOG);
      // KERNEL_CHECKPOINT_ENGINE picks the engine for every kernel whose kernelspec says auto.
      const wanted =
        options.engine === 'auto'
          ? (process.env.KERNEL_CHECKPOINT_ENGINE ?? 'auto')
          : options.engine;
      const { engine, probes } = await chooseEngine(wanted);
      for (const probe of probes.filter(p => !p.ok)) {
        log.info(`engine ${probe.name}: ${probe.problem}`);
      }
      const supervisor = new Supervisor({
        connection: readConnectionFile(options.connectionFile),
        connectionFile: options.connectionFile,
        argv,
        engine,
        store: new ImageStore(
          options.store ?? defaultStoreRoot(),
          chunkingOptionsFromEnv({
            ...process.env,
            ...(options.compression ? { KERNEL_CHECKPOINT_COMPRESSION: options.compression } : {})
          })
        ),
        kernel: {
          name: options.kernelName,
          display_name: options.displayName ?? options.kernelName,
          language: options.language
        },
        // Jupyter Server names the notebook a kernel serves in JPY_SESSION_NAME.
        notebookPath: process.env.JPY_SESSION_NAME || null,
        cwd: process.cwd(),
        env: process.env
      });
      // The supervisor never exits the process itself: it ends, and we exit with its code.
      void supervisor.ended.then(code => {
        if (options.fromImage) {
          // A fork's connection file was written for it alone (fork-flow.ts), as
          // `jupyter kernel` removes its own.
          rmSync(options.connectionFile, { force: true });
        }
        process.exit(code);
      });
      // A kernel being launched is let finish starting before it is stopped: stopped half way
      // (the supervisor exiting), a process between its fork and its parent-death signal was
      // left behind (seen: the kernel, its launcher's child, when the launcher died that early).
      let started: Promise<unknown> = Promise.resolve();
      const stopOnceStarted = () => started.then(() => supervisor.stop(0));
      process.on('SIGINT', () => supervisor.interruptKernel());
      for (const signal of ['SIGTERM', 'SIGHUP'] as const) {
        process.on(signal, () => void stopOnceStarted());
      }
      // Like ipykernel's parent poller: when whoever launched us is gone, nobody can reach the
      // kernel any more, so stop it rather than leave it running. A fork is standalone, like
      // `jupyter kernel`: its clients find it by its connection file, and it ends on their
      // shutdown_request.
      if (!options.fromImage) {
        const check = setInterval(() => {
          if (process.ppid !== launchedBy) {
            clearInterval(check);
            log.warn('the process that launched the kernel is gone; stopping');
            void stopOnceStarted();
            // What it started dies with it (parent-death signals, the PID namespace's init): a
            // stop held up (a kernel stuck in its exit) ends here, not minutes later.
            void started.then(() => setTimeout(() => process.exit(0), ORPHAN_STOP_MS).unref());
          }
        }, PARENT_CHECK_MS);
        check.unref();
      }
      const starting = supervisor.start(options.fromImage);
      started = starting.catch(() => undefined);
      try {
        await starting;
      } catch (error) {
        if (!options.fromImage) {
          throw error;
        }
        const failure = asRequestError(error);
        log.error(`the fork of ${options.fromImage} did not start: ${failure.message}`);
        tellReadiness(options.readyFd, {
          error: { code: failure.code, message: failure.message }
        });
        await supervisor.stop(1);
        return;
      }
      tellReadiness(options.readyFd, { ready: true });
      log.info(`supervising kernel ${options.kernelName} with engine ${engine.name}`);
    });
}

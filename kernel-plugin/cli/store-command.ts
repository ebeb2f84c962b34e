// `kernel-checkpoint store`: what the image store holds (total bytes, bytes per notebook, and
// what deleting each checkpoint would give back), read from the store's folder itself, so it
// works with no kernel running. `--gc` collects unused chunks, `--migrate` converts whole images
// (from before the store kept chunks) into chunk images; for a store in object storage,
// `--upload` sends what the cache has not uploaded and `--evict` removes from the cache what the
// bucket has.

import type { Command } from 'commander';

import { formatBytes, renderTable } from '../../src/format';
import { defaultStoreRoot, ImageStore, StoreError, type StoreReport } from '../store/store';

/** For a store in object storage: where it is, and each checkpoint's upload state. */
interface RemoteInfo {
  location: string;
  /** Why the object store could not be read (then only the cache's images are counted). */
  problem: string | null;
  uploaded: number;
  checkpoints: Array<{ id: string; label: string | null; upload: string }>;
}

async function remoteInfo(store: ImageStore): Promise<RemoteInfo | null> {
  if (!store.remote) {
    return null;
  }
  const checkpoints = (await store.list()).map(c => ({
    id: c.id,
    label: c.label,
    upload: c.upload?.state ?? 'local'
  }));
  return {
    location: store.location,
    problem: store.remote.listProblem,
    uploaded: checkpoints.filter(c => c.upload === 'uploaded').length,
    checkpoints
  };
}

/**
 * Sends every checkpoint of the cache that is not in the object store yet (a batch job's last
 * step, before its node and cache go); fails with the reason when the store cannot be reached.
 */
async function uploadAll(store: ImageStore): Promise<void> {
  const remote = store.remote;
  if (!remote) {
    throw new StoreError('invalid_request', '--upload is for a store in object storage (s3://).');
  }
  await remote.resumed;
  for (;;) {
    const summary = remote.uploader.summary();
    if (summary.error) {
      throw new StoreError('store_unreachable', summary.error);
    }
    if (summary.waiting === 0) {
      return;
    }
    await new Promise(resolve => setTimeout(resolve, 200));
  }
}

function reportText(report: StoreReport, remote: RemoteInfo | null): string {
  const lines = [
    ...(remote
      ? [
          `store     ${remote.location}`,
          `cache     ${report.root}`,
          `uploads   ${remote.uploaded} of ${remote.checkpoints.length} in the object store` +
            (remote.checkpoints.length > remote.uploaded
              ? ` (the others are in this cache only: \`kernel-checkpoint store --upload\`)`
              : ''),
          ...(remote.problem ? [`problem   ${remote.problem}`] : [])
        ]
      : [`store     ${report.root}`]),
    `total     ${formatBytes(report.total_bytes)}` +
      (report.garbage_bytes > 0
        ? ` (${formatBytes(report.garbage_bytes)} unused, given back by --gc)`
        : '')
  ];
  if (report.notebooks.length > 0) {
    lines.push(
      '',
      renderTable(
        [
          ['NOTEBOOK', 'CHECKPOINTS', 'BYTES'],
          ...report.notebooks.map(n => [
            n.notebook_path ?? '-',
            String(n.checkpoints),
            formatBytes(n.bytes)
          ])
        ],
        i => i > 0
      )
    );
  }
  if (report.checkpoints.length > 0) {
    lines.push(
      '',
      renderTable(
        [
          ['ID', 'LABEL', 'STORAGE', 'SIZE', 'NEW', 'DELETE FREES'],
          ...report.checkpoints.map(c => [
            c.id,
            c.label ?? '',
            c.storage,
            formatBytes(c.image_bytes),
            formatBytes(c.stored_bytes),
            formatBytes(c.freed_if_deleted)
          ])
        ],
        i => i >= 3
      )
    );
  }
  return lines.join('\n') + '\n';
}

export function registerStoreCommand(program: Command): void {
  program
    .command('store')
    .description(
      'Show what the image store holds: total bytes, bytes per notebook, and what deleting each ' +
        'checkpoint would free.'
    )
    .option(
      '--store <dir>',
      'folder of the image store (default: $KERNEL_CHECKPOINT_STORE or Jupyter data dir)'
    )
    .option('--gc', 'first give back the space of chunks no checkpoint uses any more')
    .option('--migrate', 'first convert whole images into shared chunks (each checked first)')
    .option('--upload', 'first upload what the cache of an s3:// store has not uploaded yet')
    .option(
      '--evict',
      'then remove from the cache of an s3:// store every checkpoint the object store has ' +
        '(each comes back when restored)'
    )
    .option('--json', 'print JSON for scripts')
    .action(
      async (options: {
        store?: string;
        gc?: boolean;
        migrate?: boolean;
        upload?: boolean;
        evict?: boolean;
        json?: boolean;
      }) => {
        const store = new ImageStore(options.store ?? defaultStoreRoot());
        if (options.evict && !store.remote) {
          throw new StoreError(
            'invalid_request',
            '--evict is for a store in object storage (s3://): a local store has no other copy.'
          );
        }
        if (options.upload) {
          await uploadAll(store);
        }
        if (options.migrate) {
          await store.migrate(id => {
            if (!options.json) {
              process.stderr.write(`kernel-checkpoint: store: ${id} is now kept as chunks\n`);
            }
          });
        }
        if (options.gc || options.migrate) {
          await store.collect();
        }
        if (options.evict) {
          const evicted = (await store.remote?.evictAll()) ?? [];
          if (!options.json) {
            process.stderr.write(
              `kernel-checkpoint: store: ${evicted.length} checkpoints removed from the cache\n`
            );
          }
        }
        const report = await store.report();
        const remote = await remoteInfo(store);
        process.stdout.write(
          options.json
            ? JSON.stringify(remote ? { ...report, remote } : report, null, 2) + '\n'
            : reportText(report, remote)
        );
        store.remote?.uploader.stop();
      }
    );
}

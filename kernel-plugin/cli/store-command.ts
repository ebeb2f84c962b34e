// `kernel-checkpoint store`: what the image store holds (total bytes, bytes per notebook, and
// what deleting each checkpoint would give back), read from the store's folder itself, so it
// works with no kernel running. `--gc` collects unused chunks, `--migrate` converts whole images
// (from before the store kept chunks) into chunk images.

import type { Command } from 'commander';

import { formatBytes, renderTable } from '../../src/format';
import { defaultStoreRoot, ImageStore, type StoreReport } from '../store/store';

function reportText(report: StoreReport): string {
  const lines = [
    `store     ${report.root}`,
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
    .option('--json', 'print JSON for scripts')
    .action(
      async (options: { store?: string; gc?: boolean; migrate?: boolean; json?: boolean }) => {
        const store = new ImageStore(options.store ?? defaultStoreRoot());
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
        const report = await store.report();
        process.stdout.write(
          options.json ? JSON.stringify(report, null, 2) + '\n' : reportText(report)
        );
      }
    );
}

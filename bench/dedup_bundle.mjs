// The chunk store (kernel-plugin/store/chunks.ts and zstd.ts) of a checkout, bundled for the
// dedup benches to load; the bundle goes into this repository's node_modules/.cache, so that the
// native zstd addon (kept out of it) is found.

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { buildSync } from 'esbuild';

const repo = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Bundles `tree`'s chunk store; returns the bundle's path and what it exports. */
export function loadChunkStore(tree = repo, tag = 'chunks') {
  const bundle = path.join(repo, 'node_modules', '.cache', `kc-${tag}-${process.pid}.cjs`);
  buildSync({
    stdin: {
      contents: "module.exports = { ...require('./chunks'), ...require('./zstd') };",
      resolveDir: path.join(tree, 'kernel-plugin', 'store'),
      loader: 'ts'
    },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    outfile: bundle,
    external: ['@mongodb-js/zstd'],
    nodePaths: [path.join(repo, 'node_modules')],
    logLevel: 'silent'
  });
  return { bundle, module: createRequire(import.meta.url)(bundle) };
}

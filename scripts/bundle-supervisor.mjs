// Bundles the supervisor/CLI (its TypeScript sources, type-checked by `tsc -p kernel-plugin`) into one
// CommonJS file inside the Python package, with the parts of `zeromq` it loads at run time beside
// it, so that a wheel is self-contained: kernel-plugin/python/kernel_checkpoint/_node/
//   kernel-checkpoint.cjs            the bundle (zeromq kept external)
//   node_modules/zeromq/             its JavaScript, manifest and the linux prebuilt addons
//   node_modules/cmake-ts/           the addon loader zeromq requires
//   node_modules/@mongodb-js/zstd*/  zstd for the chunk store: its loader and the native addon
//                                    package of every platform installed here
// It also copies the protocol's JSON Schema to kernel_checkpoint/protocol/ for the Python side.
// Usage: node scripts/bundle-supervisor.mjs [--entry path/to/main.ts] [--out dir]
import { build } from 'esbuild';
import { cp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const arg = name => {
  const i = process.argv.indexOf(name);
  return i === -1 ? undefined : path.resolve(process.argv[i + 1]);
};
const entry = arg('--entry') ?? path.join(root, 'kernel-plugin', 'cli', 'main.ts');
const pkgDir = arg('--pkg') ?? path.join(root, 'kernel-plugin', 'python', 'kernel_checkpoint');
const outDir = path.join(pkgDir, '_node');
const require = createRequire(path.join(root, 'package.json'));

if (!existsSync(entry)) {
  console.error(`bundle-supervisor: ${entry} does not exist; pass --entry.`);
  process.exit(1);
}

/** A copied package's trimmed package.json: its name, version and license, then `fields`. */
async function writeManifest(dir, pkg, fields) {
  const manifest = { name: pkg.name, version: pkg.version, license: pkg.license, ...fields };
  await writeFile(path.join(dir, 'package.json'), JSON.stringify(manifest, null, 2) + '\n');
}

await rm(outDir, { recursive: true, force: true });
await mkdir(outDir, { recursive: true });

// cli/main.ts only declares the program: the bundle's own entry runs it.
const stdin = `
const cli = require(${JSON.stringify(entry)});
const fail = error => {
  process.stderr.write('kernel-checkpoint: ' + (error instanceof Error ? error.message : String(error)) + '\\n');
  process.exit(1);
};
if (typeof cli.main === 'function') {
  Promise.resolve(cli.main(process.argv)).catch(fail);
} else if (typeof cli.buildProgram === 'function') {
  cli.buildProgram().parseAsync(process.argv).catch(fail);
} else {
  fail(new Error('the CLI module exports neither main() nor buildProgram()'));
}
`;

const outfile = path.join(outDir, 'kernel-checkpoint.cjs');
await build({
  stdin: {
    contents: stdin,
    resolveDir: path.dirname(entry),
    sourcefile: 'kernel-checkpoint-entry.js'
  },
  outfile,
  bundle: true,
  platform: 'node',
  target: 'node18',
  format: 'cjs',
  external: ['zeromq', 'zeromq/*', '@mongodb-js/zstd'],
  banner: { js: '#!/usr/bin/env node' },
  sourcemap: 'linked',
  legalComments: 'linked',
  logLevel: 'warning'
});

// zeromq at run time: lib/*.js, build/manifest.json and build/linux/** (its prebuilt addons),
// and cmake-ts's addon loader (the only other module lib/ requires; node-addon-api is build-only).
const modules = path.join(outDir, 'node_modules');
const zeromqDir = path.dirname(require.resolve('zeromq/package.json'));
const zeromqPkg = JSON.parse(await readFile(path.join(zeromqDir, 'package.json'), 'utf8'));
const zeromqOut = path.join(modules, 'zeromq');
await cp(path.join(zeromqDir, 'lib'), path.join(zeromqOut, 'lib'), {
  recursive: true,
  filter: src => !/\.(map|d\.ts|tsbuildinfo)$/.test(src) && !src.includes(`${path.sep}ts3.7`)
});
await cp(
  path.join(zeromqDir, 'build', 'manifest.json'),
  path.join(zeromqOut, 'build', 'manifest.json')
);
await cp(path.join(zeromqDir, 'build', 'linux'), path.join(zeromqOut, 'build', 'linux'), {
  recursive: true
});
for (const file of await readdir(zeromqDir)) {
  if (/^(LICENSE|README)/.test(file) || ['draft.js', 'v5-compat.js'].includes(file)) {
    await cp(path.join(zeromqDir, file), path.join(zeromqOut, file));
  }
}
await writeManifest(zeromqOut, zeromqPkg, {
  main: zeromqPkg.main,
  type: zeromqPkg.type,
  exports: zeromqPkg.exports
});

// (cmake-ts's exports map hides its package.json: find it from the loader.)
const cmakeTsDir = path.dirname(
  path.dirname(require.resolve('cmake-ts/build/loader', { paths: [zeromqDir] }))
);
const cmakeTsPkg = JSON.parse(await readFile(path.join(cmakeTsDir, 'package.json'), 'utf8'));
const cmakeTsOut = path.join(modules, 'cmake-ts');
await cp(path.join(cmakeTsDir, 'build', 'loader.js'), path.join(cmakeTsOut, 'build', 'loader.js'));
for (const file of await readdir(cmakeTsDir)) {
  if (/^LICENSE/.test(file)) {
    await cp(path.join(cmakeTsDir, file), path.join(cmakeTsOut, file));
  }
}
await writeManifest(cmakeTsOut, cmakeTsPkg, {
  exports: { './build/loader': './build/loader.js', './build/loader.js': './build/loader.js' }
});

// @mongodb-js/zstd at run time: its loader (index.js, bindings.js), which requires the addon
// package of its platform (@mongodb-js/zstd-<platform>), installed here by npm as an optional
// dependency; every one present is copied.
const zstdDir = path.dirname(require.resolve('@mongodb-js/zstd/package.json'));
const scopeDir = path.dirname(zstdDir);
const zstdPackages = (await readdir(scopeDir)).filter(name => /^zstd(-|$)/.test(name));
if (zstdPackages.length < 2) {
  console.error('bundle-supervisor: no native package of @mongodb-js/zstd is installed (npm ci).');
  process.exit(1);
}
for (const name of zstdPackages) {
  const from = path.join(scopeDir, name);
  await cp(from, path.join(modules, '@mongodb-js', name), {
    recursive: true,
    filter: src => !/(README\.md|\.d\.ts)$/.test(src)
  });
}

// hash-wasm for the chunk store's hash workers (kernel-plugin/store/hash-workers.ts): a worker
// is code run with `eval`, outside the bundle, and requires it by path.
const hashWasmDir = path.dirname(require.resolve('hash-wasm/package.json'));
const hashWasmPkg = JSON.parse(await readFile(path.join(hashWasmDir, 'package.json'), 'utf8'));
const hashWasmOut = path.join(modules, 'hash-wasm');
await cp(path.join(hashWasmDir, hashWasmPkg.main), path.join(hashWasmOut, hashWasmPkg.main));
await cp(path.join(hashWasmDir, 'LICENSE'), path.join(hashWasmOut, 'LICENSE'));
await writeManifest(hashWasmOut, hashWasmPkg, { main: hashWasmPkg.main });

// The protocol's JSON Schema, for the Python side's validation.
const protocolOut = path.join(pkgDir, 'protocol');
await mkdir(protocolOut, { recursive: true });
await cp(
  path.join(root, 'protocol', 'checkpoint-protocol.schema.json'),
  path.join(protocolOut, 'checkpoint-protocol.schema.json')
);

console.log(
  `bundle-supervisor: wrote ${path.relative(root, outfile)} (zeromq ${zeromqPkg.version}).`
);

// Jest runs two projects: the front end (src/**/__tests__, jsdom, with @jupyterlab/@lumino ESM
// transformed as in the JupyterLab extension template) and the supervisor
// (kernel-plugin/**/__tests__, node).
const path = require('path');

// ESM-only packages pulled in by @jupyterlab/*: transform them instead of ignoring them.
const esModules = [
  '@codemirror',
  '@jupyter/ydoc',
  '@jupyter/react-components',
  '@jupyter/web-components',
  '@microsoft/fast',
  '@jupyterlab/',
  '@lumino/',
  'exenv-es6',
  'lib0',
  'marked',
  'nanoid',
  'vscode-ws-jsonrpc',
  'y-protocols',
  'y-websocket',
  'yjs'
].join('|');

const jestDir = path.join(__dirname, 'scripts', 'jest');

/** @type {import('jest').Config} */
module.exports = {
  projects: [
    {
      displayName: 'frontend',
      rootDir: __dirname,
      roots: ['<rootDir>/src'],
      testEnvironment: 'jsdom',
      testMatch: ['**/__tests__/**/*.(spec|test).ts?(x)'],
      setupFiles: [path.join(jestDir, 'setup-jsdom.cjs')],
      moduleNameMapper: {
        '\\.(css|less|sass|scss)$': path.join(jestDir, 'style-mock.cjs'),
        '\\.(gif|ttf|eot|png|woff2?)$': path.join(jestDir, 'style-mock.cjs')
      },
      transform: {
        '\\.svg$': path.join(jestDir, 'raw-loader.cjs'),
        '^.+\\.(t|j)sx?$': [
          'ts-jest',
          {
            tsconfig: {
              allowJs: true,
              module: 'commonjs',
              composite: false,
              declaration: false,
              incremental: false,
              rootDir: '.',
              types: ['jest', 'node']
            },
            diagnostics: { ignoreCodes: [151001] }
          }
        ]
      },
      transformIgnorePatterns: [`/node_modules/(?!${esModules}).+`]
    },
    {
      displayName: 'supervisor',
      rootDir: path.join(__dirname, 'kernel-plugin'),
      roots: ['<rootDir>'],
      testPathIgnorePatterns: ['/node_modules/', '<rootDir>/lib/', '<rootDir>/python/'],
      testEnvironment: 'node',
      testMatch: ['**/__tests__/**/*.(spec|test).ts'],
      transform: {
        '^.+\\.ts$': [
          'ts-jest',
          {
            tsconfig: { types: ['jest', 'node'], incremental: false, sourceMap: true }
          }
        ]
      }
    }
  ]
};

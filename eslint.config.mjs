// ESLint flat config: typescript-eslint for the front end (src/), the supervisor (kernel-plugin/)
// and the UI tests; formatting is prettier's job (eslint-config-prettier turns style rules off).
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      '**/node_modules/',
      'lib/',
      'kernel-plugin/lib/',
      '**/labextension/',
      '**/_node/',
      'protocol/*.d.ts',
      'protocol/checkpoint-protocol-constants.js',
      '.venv/',
      'build/',
      'dist/',
      'coverage/',
      'ui-tests/test-results/',
      'ui-tests/playwright-report/',
      'ui-tests/.jupyter-test/',
      'bench/results/'
    ]
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: { ...globals.browser, ...globals.node }
    },
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { args: 'none', caughtErrors: 'none', varsIgnorePattern: '^_' }
      ],
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-namespace': 'off',
      '@typescript-eslint/no-use-before-define': 'off',
      eqeqeq: ['error', 'smart'],
      'prefer-arrow-callback': 'error'
    }
  },
  {
    files: ['**/*.cjs', '**/*.js'],
    languageOptions: { sourceType: 'commonjs' },
    rules: { '@typescript-eslint/no-require-imports': 'off' }
  },
  {
    files: ['**/__tests__/**', '**/*.spec.ts', '**/*.test.ts'],
    languageOptions: { globals: { ...globals.jest } }
  },
  prettier
);

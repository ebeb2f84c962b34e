// Prints, as one JSON list, the string literals of the TypeScript files named on the command line,
// found by the TypeScript parser (so comments, regular expressions and template parts never
// count): {file, line, kind: 'literal', values: [value]} for each string literal, and
// {file, line, kind: 'sequence', values} for each array literal whose elements are all string
// literals. Types are left out: a literal type meets the protocol's generated types wherever it
// is used as a protocol value, and tsc checks it there.
// Used by test_constants.py, which applies the same rules to these and to Python's literals.
'use strict';
const fs = require('node:fs');
const ts = require('typescript');

function stringOf(node) {
  return ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)
    ? node.text
    : undefined;
}

const found = [];
for (const file of process.argv.slice(2)) {
  const source = ts.createSourceFile(
    file,
    fs.readFileSync(file, 'utf8'),
    ts.ScriptTarget.Latest,
    true,
    file.endsWith('x') ? ts.ScriptKind.TSX : ts.ScriptKind.TS
  );
  const lineOf = node => source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1;
  const visit = node => {
    if (ts.isTypeNode(node)) {
      return;
    }
    const single = stringOf(node);
    if (single !== undefined) {
      found.push({ file, line: lineOf(node), kind: 'literal', values: [single] });
    } else if (ts.isArrayLiteralExpression(node) && node.elements.length > 0) {
      const values = node.elements.map(stringOf);
      if (values.every(value => value !== undefined)) {
        found.push({ file, line: lineOf(node), kind: 'sequence', values });
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
}
process.stdout.write(JSON.stringify(found));

// Jest transform: a file's text as its default export (SVG icons imported by @jupyterlab/*).
module.exports = {
  process(sourceText) {
    return { code: `module.exports = ${JSON.stringify(sourceText)};` };
  }
};

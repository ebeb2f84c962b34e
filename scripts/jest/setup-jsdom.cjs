// Browser APIs that jsdom lacks but @jupyterlab/* and @lumino/* use when their modules load.
const util = require('util');

if (typeof globalThis.TextEncoder === 'undefined') {
  globalThis.TextEncoder = util.TextEncoder;
  globalThis.TextDecoder = util.TextDecoder;
}
if (typeof globalThis.structuredClone === 'undefined') {
  globalThis.structuredClone = value => JSON.parse(JSON.stringify(value));
}
if (typeof window !== 'undefined') {
  window.matchMedia =
    window.matchMedia ||
    (query => ({
      matches: false,
      media: query,
      onchange: null,
      addListener() {},
      removeListener() {},
      addEventListener() {},
      removeEventListener() {},
      dispatchEvent() {
        return false;
      }
    }));
  window.ResizeObserver =
    window.ResizeObserver ||
    class ResizeObserver {
      observe() {}
      unobserve() {}
      disconnect() {}
    };
  window.IntersectionObserver =
    window.IntersectionObserver ||
    class IntersectionObserver {
      observe() {}
      unobserve() {}
      disconnect() {}
      takeRecords() {
        return [];
      }
    };
  if (!window.HTMLElement.prototype.scrollIntoView) {
    window.HTMLElement.prototype.scrollIntoView = function () {};
  }
  if (typeof window.DragEvent === 'undefined') {
    window.DragEvent = class DragEvent extends window.MouseEvent {};
  }
}

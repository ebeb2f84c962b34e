// The engine writes the image's files itself (CRIU with its own umask, 022 under Jupyter), so
// they are born 0644 until the store makes them private: a half-written image left by a killed
// supervisor stayed so, and CRIU's `stats-restore`, written into the image on every restore, too.
// Starting the engine under umask 077 makes every file it creates private from the start.

const PRIVATE_UMASK = 0o077;

/**
 * `start`, wrapped so that the process it spawns (synchronously, as execFile, spawn and every
 * async function that spawns before its first await do) inherits umask 077. The supervisor's own
 * umask is back before anything else runs, so the kernel it launches keeps the user's; a file
 * the supervisor's thread pool creates in that instant comes out only more private.
 */
export function underPrivateUmask<F extends (...args: never[]) => unknown>(start: F): F {
  // Typed as `start` itself, so that an overloaded function (promisified execFile) keeps them.
  const wrapped = (...args: Parameters<F>): ReturnType<F> => {
    const previous = process.umask(PRIVATE_UMASK);
    try {
      return start(...args) as ReturnType<F>;
    } finally {
      process.umask(previous);
    }
  };
  return wrapped as unknown as F;
}

// Verbs that talk to a running kernel over ZeroMQ (checkpoint, restore, list, delete, label).
// Filled in by the command-line client (issue 7).

import type { Command } from 'commander';

export function registerClientCommands(_program: Command): void {
  // Registered by the command-line client.
}

// What the store tests write as an image's records: a manifest and a private record.

import type { Checkpoint } from '../../../protocol/checkpoint-protocol';
import { MANIFEST_FORMAT } from '../../../protocol/checkpoint-protocol-constants';

export function testManifest(
  id: string,
  parent: string | null = null,
  notebookPath: string | null = null
): Checkpoint {
  return {
    format: MANIFEST_FORMAT,
    id,
    parent_id: parent,
    label: null,
    created: new Date().toISOString(),
    engine: { name: 'test', version: '1' },
    duration_ms: 1,
    image_bytes: 0,
    kernel: { name: 'k', display_name: 'K', language: 'python' },
    notebook_path: notebookPath,
    state: null
  };
}

export const testRecord = {
  format: MANIFEST_FORMAT,
  engine: 'test',
  engineData: {},
  kernelConnection: { key: 'secret' },
  ipcDir: '/tmp/x',
  agentEndpoint: null,
  lineage: 'l',
  arch: process.arch
} as const;

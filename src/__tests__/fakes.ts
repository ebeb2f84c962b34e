import type { JSONObject } from '@lumino/coreutils';
import type { Checkpoint, SupervisorStatus } from '../../protocol/checkpoint-protocol';
import type { ICommLike, IKernelLike } from '../comm';

/** A comm that records what the client sends and lets a test answer. */
export class FakeComm implements ICommLike {
  constructor(
    readonly targetName: string,
    readonly commId: string
  ) {}
  isDisposed = false;
  opened: JSONObject | undefined = undefined;
  openCount = 0;
  closed = false;
  sent: JSONObject[] = [];
  commsOverSubshells?: unknown = 'perCommTarget';
  onMsg: ICommLike['onMsg'] = () => undefined;
  onClose: ICommLike['onClose'] = () => undefined;

  open(data?: JSONObject) {
    this.opened = data;
    this.openCount++;
    // Like a shell future the supervisor never closes.
    return { done: new Promise(() => undefined) };
  }
  send(data: JSONObject) {
    if (this.isDisposed) {
      throw new Error('Cannot send');
    }
    this.sent.push(data);
    return { done: Promise.reject(new Error('Canceled future')) };
  }
  close() {
    this.closed = true;
    return undefined;
  }
  dispose() {
    this.isDisposed = true;
  }
  /** The supervisor sends a comm_msg. */
  receive(data: unknown) {
    void this.onMsg({ content: { data } });
  }
  /** The kernel closes the comm. */
  closeFromKernel() {
    void this.onClose({ content: { data: {} } });
    this.isDisposed = true;
  }
  lastRequest(): { request_id: string; action: string; [k: string]: unknown } {
    return this.sent[this.sent.length - 1] as never;
  }
}

export class FakeKernel implements IKernelLike {
  comms: FakeComm[] = [];
  createComm(targetName: string): FakeComm {
    const comm = new FakeComm(targetName, `comm-${this.comms.length}`);
    this.comms.push(comm);
    return comm;
  }
  get last(): FakeComm {
    return this.comms[this.comms.length - 1];
  }
}

export function status(overrides: Partial<SupervisorStatus> = {}): SupervisorStatus {
  return {
    protocol_version: '1.0',
    engine: { name: 'criu', version: '4.2.1' },
    engine_ok: true,
    current_id: null,
    kernel_name: 'python3-checkpoint',
    notebook_path: 'a.ipynb',
    busy: null,
    plugin: true,
    ...overrides
  };
}

let seq = 0;
export function ckpt(
  id: string,
  parent: string | null,
  created: string,
  overrides: Partial<Checkpoint> = {}
): Checkpoint {
  seq++;
  return {
    format: 'kernel-checkpoint/1',
    id,
    parent_id: parent,
    label: `label ${seq}`,
    created,
    engine: { name: 'criu', version: '4.2.1' },
    duration_ms: 850,
    image_bytes: 1024 * 1024,
    kernel: { name: 'python3', display_name: 'Python 3', language: 'python' },
    notebook_path: 'a.ipynb',
    state: { execution_count: 3, variables: [] },
    ...overrides
  };
}

/** Let queued promise callbacks run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await Promise.resolve();
  }
}

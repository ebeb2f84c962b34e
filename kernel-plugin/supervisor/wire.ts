// The Jupyter wire protocol (messaging spec 5.x): framing, HMAC signing, message construction.
// Shared by the supervisor's relay and the CLI's client.
//
// A message on a ROUTER/DEALER socket is
//   [ident..., "<IDS|MSG>", signature, header, parent_header, metadata, content, buffer...]
// The HMAC covers header, parent_header, metadata and content only, never the binary buffers.

import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';

import { JUPYTER_PROTOCOL_VERSION } from '../../protocol/checkpoint-protocol-constants';

export const DELIMITER = Buffer.from('<IDS|MSG>');

export type Channel = 'shell' | 'control' | 'stdin' | 'iopub' | 'hb';

export interface Header {
  msg_id: string;
  msg_type: string;
  session: string;
  username: string;
  date: string;
  version: string;
  subshell_id?: string | null;
  [key: string]: unknown;
}

export interface Message<C = Record<string, any>> {
  header: Header;
  parent_header: Partial<Header> & Record<string, unknown>;
  metadata: Record<string, unknown>;
  content: C;
  buffers: Buffer[];
}

/** The parts of a framed message, still as bytes: re-signing needs no JSON round trip. */
export interface Frames {
  identities: Buffer[];
  signature: Buffer;
  /** header, parent_header, metadata, content */
  parts: [Buffer, Buffer, Buffer, Buffer];
  buffers: Buffer[];
}

/** Signs and verifies with a connection's key (an empty key disables signing, as in Jupyter). */
export class Signer {
  readonly key: Buffer;
  private readonly algorithm: string;

  constructor(key: string, scheme = 'hmac-sha256') {
    this.key = Buffer.from(key, 'utf8');
    if (!scheme.startsWith('hmac-')) {
      throw new Error(`unsupported signature scheme ${JSON.stringify(scheme)}`);
    }
    this.algorithm = scheme.slice('hmac-'.length);
  }

  /** Whether a signature made by `other` is one this signer would make. */
  signsLike(other: Signer): boolean {
    return this.algorithm === other.algorithm && this.key.equals(other.key);
  }

  sign(parts: readonly Buffer[]): Buffer {
    if (this.key.length === 0) {
      return Buffer.alloc(0);
    }
    const hmac = createHmac(this.algorithm, this.key);
    for (const part of parts) {
      hmac.update(part);
    }
    return Buffer.from(hmac.digest('hex'), 'ascii');
  }

  verify(signature: Buffer, parts: readonly Buffer[]): boolean {
    if (this.key.length === 0) {
      return true;
    }
    const expected = this.sign(parts);
    return expected.length === signature.length && timingSafeEqual(expected, signature);
  }
}

/** Splits raw frames at the delimiter; null when they are not a Jupyter message. */
export function splitFrames(frames: readonly Buffer[]): Frames | null {
  const at = frames.findIndex(frame => frame.equals(DELIMITER));
  if (at < 0 || frames.length < at + 6) {
    return null;
  }
  return {
    identities: frames.slice(0, at),
    signature: frames[at + 1],
    parts: [frames[at + 2], frames[at + 3], frames[at + 4], frames[at + 5]],
    buffers: frames.slice(at + 6)
  };
}

/** Frames for sending, signed with `signer`. */
export function joinFrames(frames: Omit<Frames, 'signature'>, signer: Signer): Buffer[] {
  return [
    ...frames.identities,
    DELIMITER,
    signer.sign(frames.parts),
    ...frames.parts,
    ...frames.buffers
  ];
}

/** Frames for sending with the signature they came with (valid where the key is the same). */
export function passFrames(frames: Frames): Buffer[] {
  return [...frames.identities, DELIMITER, frames.signature, ...frames.parts, ...frames.buffers];
}

/** Decodes frames into a message; throws on a bad signature or malformed JSON. */
export function decode(
  raw: readonly Buffer[],
  signer: Signer
): { identities: Buffer[]; message: Message } {
  const frames = splitFrames(raw);
  if (!frames) {
    throw new Error('not a Jupyter message: no <IDS|MSG> delimiter');
  }
  if (!signer.verify(frames.signature, frames.parts)) {
    throw new Error('bad message signature');
  }
  const [header, parent, metadata, content] = frames.parts.map(part =>
    JSON.parse(part.toString('utf8'))
  );
  return {
    identities: frames.identities,
    message: { header, parent_header: parent, metadata, content, buffers: frames.buffers }
  };
}

/** Encodes and signs a message, with the routing identities in front. */
export function encode(message: Message, signer: Signer, identities: Buffer[] = []): Buffer[] {
  const parts = [message.header, message.parent_header, message.metadata, message.content].map(
    part => Buffer.from(JSON.stringify(part), 'utf8')
  ) as Frames['parts'];
  return joinFrames({ identities, parts, buffers: message.buffers }, signer);
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const keyBytes = new Map<string, Buffer>();

function isJsonSpace(byte: number): boolean {
  return byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d;
}

/**
 * The string value of `field` in the bytes of a flat JSON object (a header, a parent header, a
 * status's content), found without parsing it. Null when the field is absent or its value is not
 * a plain string (escapes included): then parse. The relay reads a field or two of every message
 * the kernel sends, and parsing whole headers was a visible part of its cost per message.
 */
export function peekString(json: Buffer, field: string): string | null {
  let key = keyBytes.get(field);
  if (!key) {
    key = Buffer.from(JSON.stringify(field), 'utf8');
    keyBytes.set(field, key);
  }
  // A quoted word followed by a colon is a key: inside a JSON string a quote is escaped.
  for (let at = json.indexOf(key); at >= 0; at = json.indexOf(key, at + 1)) {
    let i = at + key.length;
    while (i < json.length && isJsonSpace(json[i])) {
      i++;
    }
    if (json[i] !== COLON) {
      continue;
    }
    i++;
    while (i < json.length && isJsonSpace(json[i])) {
      i++;
    }
    if (json[i] !== QUOTE) {
      return null;
    }
    const end = json.indexOf(QUOTE, i + 1);
    if (end < 0 || json.subarray(i + 1, end).includes(BACKSLASH)) {
      return null;
    }
    return json.toString('utf8', i + 1, end);
  }
  return null;
}

/** The string `field` of a JSON object's bytes: peeked when it can be, else parsed (may throw). */
export function stringField(json: Buffer, field: string): string | null {
  const peeked = peekString(json, field);
  if (peeked !== null) {
    return peeked;
  }
  const value = (JSON.parse(json.toString('utf8')) as Record<string, unknown> | null)?.[field];
  return typeof value === 'string' ? value : null;
}

/** Only the header of raw frames, parsed: enough to route without decoding the content. */
export function peekHeader(frames: Frames): Header {
  return JSON.parse(frames.parts[0].toString('utf8'));
}

export function peekContent<C = Record<string, any>>(frames: Frames): C {
  return JSON.parse(frames.parts[3].toString('utf8'));
}

export interface NewMessageOptions {
  session: string;
  parent?: Partial<Header> | Record<string, never>;
  username?: string;
  metadata?: Record<string, unknown>;
  buffers?: Buffer[];
}

export function newMessage<C extends Record<string, any>>(
  msgType: string,
  content: C,
  options: NewMessageOptions
): Message<C> {
  return {
    header: {
      msg_id: randomUUID(),
      msg_type: msgType,
      session: options.session,
      username: options.username ?? 'kernel-checkpoint',
      date: new Date().toISOString(),
      version: JUPYTER_PROTOCOL_VERSION
    },
    parent_header: options.parent ?? {},
    metadata: options.metadata ?? {},
    content,
    buffers: options.buffers ?? []
  };
}

/** A Jupyter connection file (the fields this project uses). */
export interface ConnectionInfo {
  transport: 'tcp' | 'ipc';
  ip: string;
  shell_port: number;
  iopub_port: number;
  stdin_port: number;
  control_port: number;
  hb_port: number;
  key: string;
  signature_scheme: string;
  kernel_name?: string;
  [key: string]: unknown;
}

/** The ZeroMQ endpoint of one channel, as Jupyter forms it. */
export function endpoint(info: ConnectionInfo, channel: Channel): string {
  const port = info[`${channel}_port` as const] as number;
  return info.transport === 'ipc' ? `ipc://${info.ip}-${port}` : `tcp://${info.ip}:${port}`;
}

// A CRIU page server in the supervisor, for `criu lazy-pages --page-server`: the daemon reads the
// image's pagemaps itself and asks here, over TCP on 127.0.0.1, for the bytes of each range it
// serves to the kernel. The bytes come from a `PageSource` (the chunk store's, each chunk checked
// against its hash before it is sent). The protocol, from CRIU's `criu/page-xfer.c` and
// `criu/uffd.c`, is in docs/architecture.md (the lazy restore Decision).

import net from 'node:net';

import { PAGE_BYTES } from './criu-pagemap';
import type { HotPages } from './criu-prefetch';
import { peerIsProcess } from './loopback-peer';
import { log } from '../supervisor/log';

/**
 * `struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id }`, padded after cmd; a
 * page request's dst_id is the task's pid as in the image (measured: 1 for the kernel, init of its
 * PID namespace).
 */
const IOV_BYTES = 32;
const PS_IOV_ADD_F = 6;
const PS_IOV_GET = 7;
const PS_IOV_CLOSE = 0x1023;
/** The reply's command: pages follow (`PE_PRESENT << 16 | PS_IOV_ADD_F`). */
const REPLY_PRESENT = ((1 << 2) << 16) | PS_IOV_ADD_F;

/** The pages of a restored image, for the server (see store/page-source.ts). */
export interface PageSource {
  /** `count` pages of process `pid` (as in the image) from `vaddr`; throws when it cannot. */
  read(pid: number, vaddr: number, count: number): Promise<Buffer>;
}

/** An image's pages for a lazy restore, served instead of being in its pages files. */
export interface ServedPages extends PageSource {
  /**
   * The image's own folder in the store (its prefetch hint is kept beside it: the folder the
   * restore reads is temporary) and the hint its eager pages included; null: no hint kept
   * (prefetch off, or `small`).
   */
  readonly hint: { imageDir: string; pages: HotPages | null } | null;
  /** Bytes of the pages files it serves. */
  readonly bytes: number;
  /**
   * Resolves once the pages `criu restore` reads itself are in the folder's pages files (they
   * are written while the running kernel stops); rejects when they cannot be (a damaged chunk).
   */
  ready(): Promise<void>;
  /** Writes the pages files whole (a restore that turned out not to be lazy); once. */
  fillIn(): Promise<void>;
  /** One more user (a page server); `release` by each, and by the opener. */
  retain(): void;
  release(): Promise<void>;
}

/** How long a connection may wait for the daemon's pid before it is refused. */
const PEER_WAIT_MS = 30000;

/** How the server ended. */
export interface PageServerEnd {
  /** The daemon said it was done (PS_IOV_CLOSE). */
  closed: boolean;
  pages: number;
  requests: number;
  /** Time spent reading (and checking) the pages asked for. */
  readMs: number;
  /** Why it stopped serving, when it failed (a damaged chunk, a request it cannot answer). */
  error?: Error;
}

/**
 * Serves one daemon's connection: the first one shown to come from the daemon's process
 * (`trust(pid)`; engines/loopback-peer.ts) before a byte is read or sent. Any other connection is
 * closed and logged, and it keeps listening for the daemon's; once that one is in, it stops
 * listening.
 * Requests are answered in order. On a failure it answers nothing more: `onFailure` runs at once,
 * before the daemon learns anything, so that the kernel can be stopped before it could go on
 * without its pages; then `end()` drops the connection.
 */
export class PageServer {
  readonly ended: Promise<PageServerEnd>;
  onFailure: (error: Error) => void = () => undefined;
  private socket: net.Socket | null = null;
  private result: PageServerEnd = { closed: false, pages: 0, requests: 0, readMs: 0 };
  private finish: (end: PageServerEnd) => void = () => undefined;
  private daemonPid: (pid: number | null) => void = () => undefined;
  private readonly peer: Promise<number | null>;

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    private readonly source: PageSource
  ) {
    this.ended = new Promise(resolve => {
      this.finish = resolve;
    });
    this.peer = new Promise(resolve => {
      this.daemonPid = resolve;
      setTimeout(() => resolve(null), PEER_WAIT_MS).unref();
    });
    // One at a time, in the order they came: the first of the daemon's connections is served.
    let admitting = Promise.resolve();
    server.on('connection', socket => {
      admitting = admitting.then(() => this.admit(socket));
    });
  }

  /** The daemon's pid: only a connection from a socket of this process is served. */
  trust(pid: number): void {
    this.daemonPid(pid);
  }

  /** Why it stopped serving, once it failed. */
  get failure(): Error | undefined {
    return this.result.error;
  }

  static async listen(source: PageSource): Promise<PageServer> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const port = (server.address() as net.AddressInfo).port;
    return new PageServer(server, port, source);
  }

  /** Stops serving (the restore failed, or the kernel is gone); ends `ended`. */
  end(): void {
    this.daemonPid(null);
    this.server.close();
    this.socket?.destroy();
    this.finish(this.result);
  }

  /** Serves `socket` if it is the daemon's; otherwise closes it, unread. */
  private async admit(socket: net.Socket): Promise<void> {
    socket.on('error', () => undefined);
    const pid = await this.peer;
    const from = `127.0.0.1:${socket.remotePort}`;
    if (this.socket || pid === null || !(await peerIsProcess(socket, pid))) {
      socket.destroy();
      if (!this.socket) {
        log.warn(
          `page server: refused a connection from ${from}, which is not criu lazy-pages'` +
            (pid === null ? ' (no daemon)' : ` (pid ${pid})`)
        );
      }
      return;
    }
    if (socket.destroyed) {
      return;
    }
    this.accept(socket);
  }

  private accept(socket: net.Socket): void {
    this.socket = socket;
    this.server.close();
    socket.setNoDelay(true);
    let pending = Buffer.alloc(0);
    let chain = Promise.resolve();
    let failed = false;
    socket.on('data', data => {
      pending = pending.length ? Buffer.concat([pending, data]) : data;
      while (pending.length >= IOV_BYTES && !failed) {
        const iov = pending.subarray(0, IOV_BYTES);
        pending = pending.subarray(IOV_BYTES);
        const request = {
          cmd: iov.readUInt32LE(0),
          pages: Number(iov.readBigUInt64LE(8)),
          vaddr: Number(iov.readBigUInt64LE(16)),
          dst: Number(iov.readBigUInt64LE(24))
        };
        chain = chain.then(async () => {
          if (failed) {
            return;
          }
          try {
            await this.answer(socket, request);
          } catch (error) {
            failed = true;
            this.result.error = error as Error;
            this.onFailure(error as Error);
          }
        });
      }
    });
    socket.on('close', () => {
      void chain.then(() => this.finish(this.result));
    });
  }

  private async answer(
    socket: net.Socket,
    request: { cmd: number; pages: number; vaddr: number; dst: number }
  ): Promise<void> {
    if (request.cmd === PS_IOV_CLOSE) {
      this.result.closed = true;
      const status = Buffer.alloc(4);
      socket.end(status);
      return;
    }
    if (request.cmd !== PS_IOV_GET) {
      throw new Error(
        `criu lazy-pages sent command 0x${request.cmd.toString(16)}, not a page request`
      );
    }
    const reading = performance.now();
    const bytes = await this.source.read(request.dst, request.vaddr, request.pages);
    this.result.readMs += performance.now() - reading;
    if (bytes.length !== request.pages * PAGE_BYTES) {
      throw new Error(`the page source gave ${bytes.length} bytes for ${request.pages} pages`);
    }
    const reply = Buffer.alloc(IOV_BYTES);
    reply.writeUInt32LE(REPLY_PRESENT, 0);
    reply.writeBigUInt64LE(BigInt(request.pages), 8);
    reply.writeBigUInt64LE(BigInt(request.vaddr), 16);
    reply.writeBigUInt64LE(BigInt(request.dst), 24);
    this.result.requests++;
    this.result.pages += request.pages;
    socket.write(reply);
    if (!socket.write(bytes)) {
      // Both listeners go once either fires: one left per wait piled up on the socket (Node's
      // leak warning in the server's log after ten).
      await new Promise<void>(resolve => {
        const done = () => {
          socket.off('drain', done);
          socket.off('close', done);
          resolve();
        };
        socket.on('drain', done);
        socket.on('close', done);
      });
    }
  }
}

// What criu lazy-pages sends a page server (criu/page-xfer.c), spelled out for tests on their
// own rather than taken from page-server.ts, so that they check the module against the wire.

export const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
/** `struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id }`, with padding. */
export const IOV_BYTES = 32;

/** One request as the daemon writes it. */
export function daemonRequest(cmd: number, pages: number, vaddr: number, pid: number): Buffer {
  const iov = Buffer.alloc(IOV_BYTES);
  iov.writeUInt32LE(cmd, 0);
  iov.writeBigUInt64LE(BigInt(pages), 8);
  iov.writeBigUInt64LE(BigInt(vaddr), 16);
  iov.writeBigUInt64LE(BigInt(pid), 24);
  return iov;
}

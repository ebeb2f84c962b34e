// The requests to an S3-compatible object store (AWS S3, MinIO, Ceph's gateway, moto), through
// the AWS SDK for JavaScript v3. The SDK is configured only by its default provider chain: the
// standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
// AWS_PROFILE) and files (~/.aws/config, ~/.aws/credentials). Nothing here sees a credential, and
// no error message built here can hold one: they carry the key, the status and the SDK's message.

import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';

import {
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';

import type { ListedObject, S3Location } from './object-layout';

/** The object store could not be reached or refused a request (the message says which). */
export class RemoteUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RemoteUnavailableError';
  }
}

/** Parts of a multipart upload, and how many go at once. */
const PART_BYTES = 16 << 20;
const PARTS_AT_ONCE = 4;

/** The SDK's settings from the environment: path-style addressing for a non-AWS endpoint. */
export function clientConfig(env: NodeJS.ProcessEnv = process.env): S3ClientConfig {
  const endpoint = env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL;
  return {
    // MinIO, Ceph and moto serve buckets at <endpoint>/<bucket>; virtual hosts need DNS for each.
    forcePathStyle: Boolean(endpoint),
    // A local endpoint needs no region, but the SDK requires one to sign.
    ...(endpoint && !env.AWS_REGION && !env.AWS_DEFAULT_REGION && !env.AWS_PROFILE
      ? { region: 'us-east-1' }
      : {}),
    maxAttempts: 3,
    // Without these a network that drops packets leaves a list, and so the timeline, waiting
    // for ever: a connection must open within 5 s, and no socket stays silent for 60 s.
    requestHandler: { connectionTimeout: 5000, requestTimeout: 60_000 }
  };
}

/** The oldest Node the AWS SDK for JavaScript v3 runs on (its `engines`). */
const SDK_NODE_MAJOR = 20;

export class S3Remote {
  readonly client: S3Client;

  /** Throws a RangeError on a Node older than the SDK supports, saying so. */
  constructor(
    readonly location: S3Location,
    client?: S3Client
  ) {
    const major = Number(process.versions.node.split('.')[0]);
    if (major < SDK_NODE_MAJOR) {
      throw new RangeError(
        `An image store in object storage (${location.url}) needs Node >= ${SDK_NODE_MAJOR} ` +
          `(the AWS SDK's minimum); this is Node ${process.versions.node}. Install a newer Node, ` +
          'or the package with its [node] extra.'
      );
    }
    // The SDK warns once, on stderr (the Jupyter log), that releases after January 2027 will need
    // Node 22; the release in package-lock.json runs on this Node, and the log stays the user's.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = client ?? new S3Client(clientConfig());
  }

  private failure(error: unknown, what: string): Error {
    const status = (error as { $metadata?: { httpStatusCode?: number } })?.$metadata
      ?.httpStatusCode;
    const name = (error as Error)?.name ?? 'Error';
    const message = (error as Error)?.message ?? String(error);
    return new RemoteUnavailableError(
      `Cannot ${what} in ${this.location.url}: ${name}${status ? ` (HTTP ${status})` : ''}: ${message}`
    );
  }

  /** Every object below `prefix`. */
  async list(prefix: string): Promise<ListedObject[]> {
    const found: ListedObject[] = [];
    let token: string | undefined;
    try {
      do {
        const page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.location.bucket,
            Prefix: prefix,
            ContinuationToken: token
          })
        );
        for (const object of page.Contents ?? []) {
          found.push({
            key: object.Key as string,
            lastModified: object.LastModified?.getTime() ?? 0,
            size: object.Size ?? 0
          });
        }
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
    } catch (error) {
      throw this.failure(error, `list ${prefix}`);
    }
    return found;
  }

  /** Whether the object exists. */
  async exists(key: string): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.location.bucket, Key: key }));
      return true;
    } catch (error) {
      if (isNotFound(error)) {
        return false;
      }
      throw this.failure(error, `look for ${key}`);
    }
  }

  /** The object's bytes, or null when it does not exist. */
  async get(key: string): Promise<Buffer | null> {
    try {
      const reply = await this.client.send(
        new GetObjectCommand({ Bucket: this.location.bucket, Key: key })
      );
      return Buffer.from(
        await (reply.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray()
      );
    } catch (error) {
      if (isNotFound(error)) {
        return null;
      }
      throw this.failure(error, `read ${key}`);
    }
  }

  /**
   * Writes a small object once: `If-None-Match: *`, so an object already there is never replaced
   * (servers without conditional writes ignore it; every key written here is unique anyway).
   * Returns false when it was there already.
   */
  async putOnce(key: string, body: Buffer): Promise<boolean> {
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.location.bucket,
          Key: key,
          Body: body,
          IfNoneMatch: '*'
        })
      );
      return true;
    } catch (error) {
      const status = (error as { $metadata?: { httpStatusCode?: number } })?.$metadata
        ?.httpStatusCode;
      if (status === 412) {
        return false;
      }
      throw this.failure(error, `write ${key}`);
    }
  }

  /** Uploads a file (multipart when large, several parts at once); `onBytes` hears progress. */
  async uploadFile(key: string, file: string, onBytes: (sent: number) => void): Promise<void> {
    try {
      const upload = new Upload({
        client: this.client,
        params: { Bucket: this.location.bucket, Key: key, Body: createReadStream(file) },
        partSize: PART_BYTES,
        queueSize: PARTS_AT_ONCE
      });
      upload.on('httpUploadProgress', progress => onBytes(progress.loaded ?? 0));
      await upload.done();
    } catch (error) {
      throw this.failure(error, `upload ${key}`);
    }
  }

  /** Downloads an object into `dest` (created 0600); false when the object does not exist. */
  async downloadFile(key: string, dest: string): Promise<boolean> {
    let body: Readable;
    try {
      const reply = await this.client.send(
        new GetObjectCommand({ Bucket: this.location.bucket, Key: key })
      );
      body = reply.Body as Readable;
    } catch (error) {
      if (isNotFound(error)) {
        return false;
      }
      throw this.failure(error, `read ${key}`);
    }
    const handle = await fs.open(dest, 'w', 0o600);
    try {
      await pipeline(body, createWriteStream('', { fd: handle.fd, autoClose: false }));
      await handle.sync();
    } catch (error) {
      throw this.failure(error, `read ${key}`);
    } finally {
      await handle.close();
    }
    return true;
  }

  /** Deletes objects (1000 per request); missing ones are no error. */
  async deleteKeys(keysToDelete: string[]): Promise<void> {
    for (let start = 0; start < keysToDelete.length; start += 1000) {
      try {
        const reply = await this.client.send(
          new DeleteObjectsCommand({
            Bucket: this.location.bucket,
            Delete: {
              Objects: keysToDelete.slice(start, start + 1000).map(Key => ({ Key })),
              Quiet: true
            }
          })
        );
        if (reply.Errors && reply.Errors.length > 0) {
          const first = reply.Errors[0];
          throw new Error(`${first.Key}: ${first.Code} ${first.Message}`);
        }
      } catch (error) {
        throw this.failure(error, 'delete objects');
      }
    }
  }
}

function isNotFound(error: unknown): boolean {
  const named = (error as Error)?.name;
  const status = (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
  return named === 'NotFound' || named === 'NoSuchKey' || status === 404;
}

// The baseline of bench/s3_bench.py: the same S3 client as the store's (the AWS SDK for
// JavaScript v3, configured from the same environment, the same part size and parts at once)
// uploading one file as one object and downloading it again. Prints {"upload_s", "download_s"}.
//
//   node bench/s3_transfer.mjs BUCKET KEY FILE

import { createReadStream, createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';

import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';

const [bucket, key, file] = process.argv.slice(2);
const client = new S3Client({ forcePathStyle: true, region: 'us-east-1', maxAttempts: 3 });

let started = performance.now();
await new Upload({
  client,
  params: { Bucket: bucket, Key: key, Body: createReadStream(file) },
  partSize: 16 << 20,
  queueSize: 4
}).done();
const upload = (performance.now() - started) / 1000;

started = performance.now();
const reply = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
await pipeline(reply.Body, createWriteStream(`${file}.down`, { mode: 0o600 }));
const download = (performance.now() - started) / 1000;
await rm(`${file}.down`);
process.stdout.write(JSON.stringify({ upload_s: upload, download_s: download }) + '\n');

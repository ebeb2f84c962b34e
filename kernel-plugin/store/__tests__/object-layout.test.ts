// The layout of a store in object storage: parsing s3:// locations, the cache folder they map to,
// which images a listing says exist (deletes and the newest label win), and which packs garbage
// collection may delete (never one a live image, a young refs object or its own youth protects).

import {
  cacheFolder,
  catalogOf,
  keys,
  parseS3Url,
  planSweep,
  type ListedObject
} from '../object-layout';

const at = (key: string, lastModified = 0, size = 1): ListedObject => ({ key, lastModified, size });
const ID1 = 'ckpt-20260101T120000Z-aaaaaa';
const ID2 = 'ckpt-20260101T120100Z-bbbbbb';
const PACK1 = 'm1abc-0123456789ab';
const PACK2 = 'm1abd-0123456789ac';
const PACK3 = 'm1abe-0123456789ad';

describe('parseS3Url', () => {
  it('reads the bucket and a prefix, normalised to end with a slash', () => {
    expect(parseS3Url('s3://images/users/ada')).toEqual({
      url: 's3://images/users/ada/',
      bucket: 'images',
      prefix: 'users/ada/'
    });
    expect(parseS3Url('s3://images')).toMatchObject({ prefix: '', url: 's3://images/' });
    expect(parseS3Url('s3://images//a///b/').prefix).toBe('a/b/');
  });

  it('refuses what is not a bucket, and a prefix that climbs', () => {
    expect(() => parseS3Url('s3://')).toThrow(/not an S3 location/);
    expect(() => parseS3Url('s3://Upper_Case')).toThrow(/not an S3 location/);
    expect(() => parseS3Url('s3://images/a/../b')).toThrow(/"\." or "\.\."/);
  });

  it('maps every location to one folder of the cache, never above it', () => {
    const folder = cacheFolder('/cache', parseS3Url('s3://images/users/ada'));
    expect(folder).toBe('/cache/s3/images%2Fusers%2Fada');
    expect(cacheFolder('/cache', parseS3Url('s3://images/users/bob'))).not.toBe(folder);
  });
});

describe('catalogOf', () => {
  const l = parseS3Url('s3://images/p');

  it('lists images with a manifest, not deleted ones, and the newest label of each', () => {
    const catalog = catalogOf(
      l,
      [
        at(keys.image(l, ID1, 'chunks.bin')),
        at(keys.image(l, ID1, 'manifest.json')),
        // Its upload has not reached its manifest yet: not an image.
        at(keys.image(l, ID2, 'chunks.bin')),
        at('p/images/not-an-id/manifest.json')
      ],
      [],
      [at(keys.label(l, ID1, 2000, 'x')), at(keys.label(l, ID1, 10_000, 'y'))]
    );
    expect([...catalog.images]).toEqual([ID1]);
    expect(catalog.labelKeys.get(ID1)).toBe(keys.label(l, ID1, 10_000, 'y'));

    const deleted = catalogOf(
      l,
      [at(keys.image(l, ID1, 'manifest.json'))],
      [at(keys.deleted(l, ID1))],
      []
    );
    expect(deleted.images.size).toBe(0);
    expect([...deleted.deleted]).toEqual([ID1]);
  });
});

describe('planSweep', () => {
  const l = parseS3Url('s3://images/p');
  const hour = 3600_000;
  const now = 10 * hour;
  const packs = [
    at(keys.pack(l, PACK1), 0),
    at(keys.pack(l, PACK2), 0),
    at(keys.pack(l, PACK3), now - 60_000)
  ];

  it('deletes only old packs that no image and no young refs object name', () => {
    const plan = planSweep(
      l,
      packs,
      [PACK1],
      [{ object: at(keys.refs(l, ID2, 'r'), now - 1000), packs: [PACK2] }],
      now,
      hour
    );
    expect(plan).toEqual({ packs: [], staleRefs: [] });
  });

  it('sweeps a pack once its refs object is older than the grace, and that refs object too', () => {
    const refs = { object: at(keys.refs(l, ID2, 'r'), now - 2 * hour), packs: [PACK2] };
    const plan = planSweep(l, packs, [PACK1], [refs], now, hour);
    expect(plan).toEqual({ packs: [PACK2], staleRefs: [refs.object.key] });
  });

  it('keeps a young pack no one names yet (an upload before its refs landed)', () => {
    expect(planSweep(l, packs, [], [], now, hour).packs).toEqual([PACK1, PACK2]);
    expect(planSweep(l, packs, [], [], now, 0).packs).toEqual([PACK1, PACK2, PACK3]);
  });
});

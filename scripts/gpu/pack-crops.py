"""Packs the training and validation crops of a faceage crop cache as JPEGs (quality 90,
4:2:0), small enough to carry to a GPU machine that cannot see the dataset: the 64 px cache
(418 MB of pixels) packs into 49 MB. The test split stays behind. The split is the one
`faceage-host train` makes with its default --seed 1 (data.rs `split_of`, reimplemented here).

Usage: pack-crops.py CACHE OUT [QUALITY]   (scripts/gpu/prepare.sh calls it)"""
import io, json, struct, sys, zlib
from pathlib import Path
from PIL import Image

MAGIC = b'FACEAGE-CROPS-v2'
M = (1 << 64) - 1

def fnv1a(seed, data):
    h = 0xcbf29ce484222325 ^ ((seed * 0x9E3779B97F4A7C15) & M)
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & M
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & M
    h ^= h >> 33
    return h

def split(path, seed=1):
    b = fnv1a(seed, Path(path).name.encode()) % 100
    return 'train' if b < 80 else 'val' if b < 90 else 'test'

cache, out = sys.argv[1], sys.argv[2]
quality = int(sys.argv[3]) if len(sys.argv) > 3 else 90
f = open(cache, 'rb')
assert f.read(16) == MAGIC
header = json.loads(f.read(struct.unpack('<Q', f.read(8))[0]))
pixels = f.read()
side = 0
s = header['settings']
extra = round(s['input_size'] * (s['margin'] - 1.0) / 2.0)
side = s['input_size'] + 2 * extra
crop_len = side * side * 3
assert len(pixels) == header['crops'] * crop_len
images, blobs, counts = [], [], {}
for img in header['images']:
    # faceage-host looks images up by canonical (absolute) path; entries with other paths
    # come from before it did and are never read again.
    if split(img['path']) == 'test' or not Path(img['path']).is_absolute():
        continue
    outcome = img['outcome']
    if 'Ok' in outcome:
        face, at = outcome['Ok']
        crop = Image.frombytes('RGB', (side, side), pixels[at * crop_len:(at + 1) * crop_len])
        buf = io.BytesIO()
        crop.save(buf, 'JPEG', quality=quality, subsampling=2)
        blobs.append(buf.getvalue())
        img = dict(img, outcome={'Ok': [face, len(blobs) - 1]})
        counts[split(img['path'])] = counts.get(split(img['path']), 0) + 1
    images.append(img)
pack = {'cache_name': Path(cache).name, 'side': side,
        'header': dict(header, images=images, crops=len(blobs)),
        'jpeg_lens': [len(b) for b in blobs]}
meta = zlib.compress(json.dumps(pack).encode(), 9)
with open(out, 'wb') as o:
    o.write(b'FACEAGE-PACK-v1\n')
    o.write(struct.pack('<Q', len(meta)))
    o.write(meta)
    for b in blobs:
        o.write(b)
print(counts, len(images), 'images', sum(map(len, blobs)) / 1e6, 'MB of JPEG')

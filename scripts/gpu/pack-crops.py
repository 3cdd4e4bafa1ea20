"""Packs the training and validation crops of a faceage crop cache as JPEGs (quality 90,
4:2:0), small enough to carry to a GPU machine that cannot see the dataset: the 64 px cache
(418 MB of pixels) packs into 49 MB. The test split stays behind. The split is the one
`faceage-host train` makes with its default --seed 1 (scripts/crop_cache.py).

Usage: pack-crops.py CACHE OUT [QUALITY]   (scripts/gpu/prepare.sh calls it)"""
import io, json, struct, sys, zlib
from pathlib import Path
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from crop_cache import CropCache, split_of  # noqa: E402

cache, out = sys.argv[1], sys.argv[2]
quality = int(sys.argv[3]) if len(sys.argv) > 3 else 90
crops = CropCache(cache)
header, side = crops.header, crops.side
images, blobs, counts = [], [], {}
for img in crops.live_images():
    if split_of(img['path']) == 'test':
        continue
    outcome = img['outcome']
    if 'Ok' in outcome:
        face, at = outcome['Ok']
        crop = Image.frombytes('RGB', (side, side), crops.crop(at))
        buf = io.BytesIO()
        crop.save(buf, 'JPEG', quality=quality, subsampling=2)
        blobs.append(buf.getvalue())
        img = dict(img, outcome={'Ok': [face, len(blobs) - 1]})
        counts[split_of(img['path'])] = counts.get(split_of(img['path']), 0) + 1
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

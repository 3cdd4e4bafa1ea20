"""Unpacks pack-crops.py's file into a crop cache under CACHE_DIR, and makes an empty
placeholder of the right length at each listed image's path (the cache matches images by path
and length, so `faceage-host train` then reads every crop from the cache and decodes no
image). An existing file is never touched: it must already have the listed length.

Usage: unpack-crops.py PACK CACHE_DIR   (scripts/gpu/session.sh calls it on the GPU machine)"""
import io, json, os, struct, sys, zlib
from PIL import Image
try:
    import numpy as np
    from safetensors.numpy import save_file
except ImportError:
    sys.exit('numpy and safetensors are missing: scripts/gpu/session.sh installs them from .gpu/wheels')

pack_path, cache_dir = sys.argv[1], sys.argv[2]
f = open(pack_path, 'rb')
if f.read(16) != b'FACEAGE-PACK-v1\n':
    sys.exit(f'{pack_path}: not a crop pack')
pack = json.loads(zlib.decompress(f.read(struct.unpack('<Q', f.read(8))[0])))
# For a local trial: PREFIX=/tmp/x moves every image path under /tmp/x.
prefix = os.environ.get('PREFIX', '')
for img in pack['header']['images']:
    img['path'] = prefix + img['path']
side, header = pack['side'], pack['header']
pixels = bytearray()
for n in pack['jpeg_lens']:
    im = Image.open(io.BytesIO(f.read(n))).convert('RGB')
    if im.size != (side, side):
        sys.exit(f'{pack_path}: a packed crop is {im.size}, not {side}x{side}')
    pixels += im.tobytes()
for img in header['images']:
    os.makedirs(os.path.dirname(img['path']), exist_ok=True)
    if os.path.exists(img['path']):
        # Never touch a real image: only a placeholder of the same length is acceptable.
        if os.path.getsize(img['path']) != img['len']:
            sys.exit(f"{img['path']}: exists with another length than the packed image's; not touched")
        continue
    with open(img['path'], 'xb') as p:
        p.truncate(img['len'])
os.makedirs(cache_dir, exist_ok=True)
crops = np.frombuffer(bytes(pixels), np.uint8).reshape(header['crops'], side, side, 3)
save_file({'crops': crops}, os.path.join(cache_dir, pack['cache_name']),
          metadata={'faceage.format': 'faceage-crops-v5', 'faceage.crops': json.dumps(header)})
print('unpacked', header['crops'], 'crops of', len(header['images']), 'images into',
      os.path.join(cache_dir, pack['cache_name']))

"""Reads faceage-host's crop cache (runs/cache/crops-*.bin) and its split, for the Python tools
(scripts/gpu/pack-crops.py, scripts/ensemble-eval.py). The split is the one `faceage-host train`
makes with its default --seed 1: data.rs `split_of`, reimplemented here."""
import json, struct
from pathlib import Path

MAGIC = b'FACEAGE-CROPS-v3'
_M = (1 << 64) - 1


def _fnv1a(seed, data):
    h = 0xcbf29ce484222325 ^ ((seed * 0x9E3779B97F4A7C15) & _M)
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & _M
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & _M
    h ^= h >> 33
    return h


def split_of(path, seed=1):
    """'train', 'val' or 'test', from a seeded hash of the file name (80/10/10)."""
    b = _fnv1a(seed, Path(path).name.encode()) % 100
    return 'train' if b < 80 else 'val' if b < 90 else 'test'


def utkface_labels(path):
    """(age, female) from a UTKFace name age_gender_race_datetime.jpg.chip.jpg, or None where
    data.rs `parse_utkface_name` rejects the name (those images are never in a split)."""
    parts = Path(path).name.split('.')[0].split('_')
    if len(parts) != 4 or parts[1] not in ('0', '1') or parts[2] not in ('0', '1', '2', '3', '4'):
        return None
    if not parts[0].isdigit() or int(parts[0]) > 120:
        return None
    return int(parts[0]), parts[1] == '1'


class CropCache:
    """The header (settings, images) and pixels of one cache file. Each cached crop is
    `side` x `side` RGB: the model's input_size crop plus `extra` pixels of margin on each side."""

    def __init__(self, path):
        with open(path, 'rb') as f:
            if f.read(16) != MAGIC:
                raise SystemExit(f'{path}: not a faceage crop cache ({MAGIC.decode()})')
            self.header = json.loads(f.read(struct.unpack('<Q', f.read(8))[0]))
            self.pixels = f.read()
        s = self.header['settings']
        self.input_size = s['input_size']
        self.crop_scale = s['geometry']['scale']
        self.extra = round(s['input_size'] * (s['margin'] - 1.0) / 2.0)
        self.side = s['input_size'] + 2 * self.extra
        self.crop_len = self.side * self.side * 3
        if len(self.pixels) != self.header['crops'] * self.crop_len:
            raise SystemExit(f'{path}: truncated ({len(self.pixels)} bytes of pixels, '
                             f'{self.header["crops"]} crops of {self.crop_len} expected)')

    def live_images(self):
        """Entries faceage-host can still look up: it keys images by canonical (absolute) path;
        entries with other paths come from before it did and are never read again."""
        return [img for img in self.header['images'] if Path(img['path']).is_absolute()]

    def crop(self, at):
        """Raw bytes of cached crop number `at` (side x side x 3, RGB)."""
        return self.pixels[at * self.crop_len:(at + 1) * self.crop_len]


def find_cache(cache_dir, input_size):
    """The cache under cache_dir whose crops serve a model of this input size, or None."""
    for f in sorted(Path(cache_dir).glob('crops-*.bin')):
        with open(f, 'rb') as h:
            if h.read(16) == MAGIC and json.loads(h.read(struct.unpack('<Q', h.read(8))[0]))['settings']['input_size'] == input_size:
                return f
    return None

"""Reads faceage-host's crop cache (runs/cache/crops-*.safetensors, through the safetensors
library) and its split, for the Python tools
(scripts/gpu/pack-crops.py, scripts/ensemble-eval.py). The split is the one `faceage-host train`
makes with its default --seed 1: data.rs `split_of`, reimplemented here."""
import json
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


FORMAT = 'faceage-crops-v5'


class CropCache:
    """The header (settings, images) and pixels of one cache file, a safetensors file: tensor
    `crops` (uint8, [crops, side, side, 3]) and the header as JSON in metadata `faceage.crops`.
    Each cached crop is the model's input_size crop plus `extra` pixels of margin on each side."""

    def __init__(self, path):
        try:
            from safetensors import safe_open
        except ImportError:
            raise SystemExit('the safetensors package is missing: pip install safetensors numpy')
        with safe_open(str(path), framework='np') as f:
            meta = f.metadata() or {}
            if meta.get('faceage.format') != FORMAT:
                raise SystemExit(f'{path}: not a faceage crop cache ({FORMAT})')
            self.header = json.loads(meta['faceage.crops'])
            self.crops = f.get_tensor('crops')
        s = self.header['settings']
        self.input_size = s['input_size']
        self.crop_scale = s['geometry']['scale']
        self.extra = round(s['input_size'] * (s['margin'] - 1.0) / 2.0)
        self.side = s['input_size'] + 2 * self.extra
        if self.crops.shape != (self.header['crops'], self.side, self.side, 3):
            raise SystemExit(f'{path}: crops of shape {self.crops.shape}, '
                             f'{self.header["crops"]} crops of {self.side}x{self.side} expected')

    def live_images(self):
        """Entries faceage-host can still look up: it keys images by canonical (absolute) path;
        entries with other paths come from before it did and are never read again."""
        return [img for img in self.header['images'] if Path(img['path']).is_absolute()]

    def crop(self, at):
        """Raw bytes of cached crop number `at` (side x side x 3, RGB)."""
        return self.crops[at].tobytes()


def find_cache(cache_dir, input_size):
    """The cache under cache_dir whose crops serve a model of this input size, or None."""
    from safetensors import safe_open
    for f in sorted(Path(cache_dir).glob('crops-*.safetensors')):
        with safe_open(str(f), framework='np') as h:
            meta = h.metadata() or {}
            if meta.get('faceage.format') == FORMAT and \
                    json.loads(meta['faceage.crops'])['settings']['input_size'] == input_size:
                return f
    return None

"""Reads one exported faceage model file on more views of each face than the graph's own
(the crop shifted by a few pixels, or zoomed), cut from the crop cache's wider crops, and
averages the readings: what more test-time augmentation would buy on the board, at one
more read per view (the model card's "What was tried"). Not something the board runs.

Usage: views-eval.py [--split test|val] [--shift PX] MODEL.onnx
Needs numpy, onnx, onnxruntime and pillow (pip), and the crop cache `faceage-host` builds."""
import argparse, importlib.util, sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crop_cache import CropCache, find_cache, split_of, utkface_labels  # noqa: E402

# The model-file contract as ensemble-eval.py reads it (its file name is not a module name).
_spec = importlib.util.spec_from_file_location('ensemble_eval', Path(__file__).resolve().parent / 'ensemble-eval.py')
_ensemble_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ensemble_eval)
ModelFile = _ensemble_eval.ModelFile


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--split', default='test', choices=['test', 'val'])
    ap.add_argument('--shift', type=int, default=2, help='pixels the shifted views move [2]')
    ap.add_argument('model', type=Path)
    args = ap.parse_args()
    model = ModelFile(args.model)
    if model.seed is None:
        sys.exit(f'{args.model}: its metadata does not say the split seed (faceage.train.data)')
    size, mean, std, seed = model.size, model.mean, model.std, model.seed
    cache_file = find_cache(Path(__file__).resolve().parent.parent / 'runs/cache', size)
    if cache_file is None:
        sys.exit(f'no {size} px crop cache under runs/cache: run faceage-host verify --data DIR once')
    cache = CropCache(cache_file)
    wide, ages, female = [], [], []
    for img in cache.live_images():
        labels = utkface_labels(img['path'])
        if split_of(img['path'], seed) != args.split or 'Ok' not in img['outcome'] or labels is None:
            continue
        wide.append(np.frombuffer(cache.crop(img['outcome']['Ok'][1]), np.uint8).reshape(cache.side, cache.side, 3))
        ages.append(labels[0])
        female.append(labels[1])
    wide, ages, female = np.stack(wide), np.array(ages, float), np.array(female)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(args.model), options)

    def view(dx=0, dy=0, zoom=1.0):
        side = int(round(size / zoom))
        x0, y0 = (cache.side - side) // 2 + dx, (cache.side - side) // 2 + dy
        crops = wide[:, y0:y0 + side, x0:x0 + side]
        if side != size:
            crops = np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in crops])
        return crops

    def read(faces):
        age, p = [], []
        for i in range(0, len(faces), 256):
            x = ((faces[i:i + 256] / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
            a, f = session.run(list(model.outputs), {model.input: x})
            age.append(a)
            p.append(f)
        return np.concatenate(age), np.concatenate(p)

    s = args.shift
    views = {'centred': {}, f'left {s}': {'dx': -s}, f'right {s}': {'dx': s}, f'up {s}': {'dy': -s},
             f'down {s}': {'dy': s}, 'zoom in 6%': {'zoom': 1.06}, 'zoom out 6%': {'zoom': 0.94}}
    readings = {name: read(view(**v)) for name, v in views.items()}
    print(f'{args.split} split (seed {seed}): {len(ages)} faces, {args.model}')

    def show(names):
        age = np.mean([readings[n][0] for n in names], axis=0)
        p = np.mean([readings[n][1] for n in names], axis=0)
        print(f'age MAE {np.abs(age - ages).mean():.3f}  gender {100 * ((p > 0.5) == female).mean():.2f}%  '
              + ' + '.join(names))

    for name in views:
        show([name])
    names = list(views)
    show(names[:5])
    show([names[0], *names[5:]])
    show(names)


if __name__ == '__main__':
    main()

"""Reads exported faceage model files (ONNX, as the board runs them) on a split of the crop
cache, each alone and averaged together: the age readings and p(female) of the files are
averaged per face. It measures what an ensemble of trained runs could teach one distilled net
(the model card's "What was tried"), not something the board runs: an ensemble multiplies the
parameters past the product's budget.

The crops are the board's (the cache `faceage-host train` builds), so each file alone gives
the figures of `faceage-host eval --run R --mirror` for the run it was exported from. The
split is the one of --seed 1, which every shipped and experiment run uses.

It also prints how far the counts per age band (what the board logs) are from the truth,
summed over the bands: "read" counts each face in the band of its age reading, as the board
does; "mass" adds each face's predicted probability mass per band (the file's averaged age
distribution, which export.rs names `age.probs.averaged`, or `age.probs` in a file read once),
a way of counting the board could take up.

Usage: ensemble-eval.py [--split test|val] [--cache FILE] [--subsets] MODEL.onnx...
  --subsets   also every subset of two files or more, best age MAE first
Needs numpy, onnx and onnxruntime (pip)."""
import argparse, itertools, sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crop_cache import CropCache, find_cache, split_of, utkface_labels  # noqa: E402

MEAN, STD = 0.5, 0.25  # augment.rs: x = (pixel / 255 - MEAN) / STD
BAND_EDGES = [0, 3, 13, 20, 40, 60, float('inf')]  # the board's age bands (counts.rs)
# export.rs: the age distribution over the bins, both views averaged; or read once (--no-mirror).
DISTRIBUTIONS = ('age.probs.averaged', 'age.probs')


def read_split(cache, split):
    faces, ages, female = [], [], []
    e, s = cache.extra, cache.input_size
    for img in cache.live_images():
        labels = utkface_labels(img['path'])
        if split_of(img['path']) != split or 'Ok' not in img['outcome'] or labels is None:
            continue
        wide = np.frombuffer(cache.crop(img['outcome']['Ok'][1]), np.uint8).reshape(cache.side, cache.side, 3)
        faces.append(((wide[e:e + s, e:e + s] / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32))
        ages.append(labels[0])
        female.append(labels[1])
    return np.stack(faces), np.array(ages, float), np.array(female)


def band_of(age):
    return np.clip(np.searchsorted(BAND_EDGES, age, side='right') - 1, 0, len(BAND_EDGES) - 2)


def read_model(path, faces):
    """Per face: age reading, p(female), and the probability mass per age band."""
    model = onnx.load(str(path))
    bins = [onnx.numpy_helper.to_array(t).ravel() for t in model.graph.initializer if t.name == 'age.bins']
    tensors = {o for n in model.graph.node for o in n.output}
    distribution = next((d for d in DISTRIBUTIONS if d in tensors), None)
    if not bins or distribution is None:
        sys.exit(f'{path}: no age distribution ({" or ".join(DISTRIBUTIONS)}, age.bins): not a faceage export')
    model.graph.output.append(onnx.helper.make_tensor_value_info(distribution, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options)
    bins = bins[0]
    band_matrix = np.stack([band_of(bins) == k for k in range(len(BAND_EDGES) - 1)], axis=1).astype(np.float64)
    age, female, mass = [], [], []
    for i in range(0, len(faces), 256):
        a, f, p = session.run(['age', 'female', distribution], {'faces': faces[i:i + 256]})
        age.append(a)
        female.append(f)
        mass.append(p @ band_matrix)
    return np.concatenate(age), np.concatenate(female), np.concatenate(mass)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--split', default='test', choices=['test', 'val'])
    ap.add_argument('--cache', help='crop cache file [default: the one under runs/cache for the models\' input size]')
    ap.add_argument('--subsets', action='store_true')
    ap.add_argument('models', nargs='+', type=Path)
    args = ap.parse_args()
    sizes = set()
    for m in args.models:
        if not m.is_file():
            sys.exit(f'{m}: no such model file')
        inputs = ort.InferenceSession(str(m)).get_inputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or inputs[0].name != 'faces' or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
            sys.exit(f'{m}: not a faceage model file (one input `faces` [N, 3, S, S] expected)')
        sizes.add(shape[3])
    if len(sizes) != 1 or not isinstance(next(iter(sizes)), int):
        sys.exit(f'the model files need one fixed input size, got {sorted(map(str, sizes))}')
    size = sizes.pop()
    cache = args.cache or find_cache(Path(__file__).resolve().parent.parent / 'runs/cache', size)
    if cache is None:
        sys.exit(f'no {size} px crop cache under runs/cache: run faceage-host train --size {size} once')
    crops = CropCache(cache)
    if crops.input_size != size:
        sys.exit(f'{cache}: crops for {crops.input_size} px, the models read {size} px')
    faces, ages, female = read_split(crops, args.split)
    print(f'{args.split} split: {len(ages)} faces ({cache})')
    readings = [read_model(m, faces) for m in args.models]

    truly = np.bincount(band_of(ages), minlength=len(BAND_EDGES) - 1)

    def figures(members):
        age = np.mean([readings[i][0] for i in members], axis=0)
        p_female = np.mean([readings[i][1] for i in members], axis=0)
        mass = np.mean([readings[i][2] for i in members], axis=0).sum(axis=0)
        read = np.bincount(band_of(age), minlength=len(truly))
        return (np.abs(age - ages).mean(), 100 * ((p_female > 0.5) == female).mean(),
                np.abs(read - truly).sum(), np.abs(mass - truly).sum())

    rows = [((i,), *figures([i])) for i in range(len(readings))]
    groups = [tuple(range(len(readings)))]
    if args.subsets:
        groups = [g for k in range(2, len(readings) + 1) for g in itertools.combinations(range(len(readings)), k)]
    ensembles = sorted(((g, *figures(g)) for g in groups), key=lambda r: r[1])
    for members, mae, acc, off_read, off_mass in rows + ensembles:
        name = ' + '.join(args.models[i].stem for i in members)
        print(f'age MAE {mae:.2f}  gender {acc:.2f}%  bands off: read {off_read}, mass {off_mass:.0f}  {name}')


if __name__ == '__main__':
    main()

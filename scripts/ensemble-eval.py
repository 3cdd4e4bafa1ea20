"""Reads exported faceage model files (ONNX, as the board runs them) on a split of the crop
cache, each alone and averaged together: the age readings and p(female) of the files are
averaged per face. It measures what an ensemble of trained runs could teach one distilled net
(the model card's "What was tried"), not something the board runs: an ensemble multiplies the
parameters past the product's budget.

The crops are the board's (the cache `faceage-host train` builds), so each file alone gives
the figures of `faceage-host eval --run R --mirror` for the run it was exported from. How to
read the faces (input size and normalisation, crop, the split's seed) comes from each file's
own metadata, the model-file contract; the files must agree on it.

It also prints how far the counts per age band (what the board logs) are from the truth,
summed over the bands: "read" counts each face in the band of its age reading, as the board
does; "mass" adds each face's predicted probability mass per band (the file's averaged age
distribution, which export.rs names `age.probs.averaged`, or `age.probs` in a file read once),
a way of counting the board could take up.

Usage: ensemble-eval.py [--split test|val] [--cache FILE] [--subsets] MODEL.onnx...
  --subsets   also every subset of two files or more, best age MAE first
Needs numpy, onnx and onnxruntime (pip)."""
import argparse, itertools, re, sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crop_cache import CropCache, find_cache, split_of, utkface_labels  # noqa: E402

BAND_EDGES = [0, 3, 13, 20, 40, 60, float('inf')]  # the board's age bands (counts.rs)
# host/src/export/mod.rs AGE_DISTRIBUTIONS: the age distribution, both views averaged; or read once (--no-mirror).
DISTRIBUTIONS = ('age.probs.averaged', 'age.probs')


class ModelFile:
    """A faceage model file and what its metadata says about reading it (the model-file
    contract: input name, size, normalisation, crop; the split seed of its training data)."""

    def __init__(self, path):
        if not path.is_file():
            sys.exit(f'{path}: no such model file')
        try:
            self.graph = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001 - onnx raises several kinds for a foreign file
            sys.exit(f'{path}: not an ONNX file ({e})')
        meta = {p.key: p.value for p in self.graph.metadata_props}
        if 'faceage.schema' not in meta:
            sys.exit(f'{path}: not a faceage model file (no faceage.* metadata)')
        self.path, self.name = path, path.stem
        self.input = meta['faceage.input.name']
        self.size = int(meta['faceage.input.size'])
        self.mean = np.array([float(v) for v in meta['faceage.input.mean'].split(',')])
        self.std = np.array([float(v) for v in meta['faceage.input.std'].split(',')])
        self.crop_scale = float(meta['faceage.crop.scale'])
        if 'faceage.train.split_seed' in meta:
            self.seed = int(meta['faceage.train.split_seed'])
        else:  # files from before the key say it in words
            seed = re.search(r'split seed (\d+)', meta.get('faceage.train.data', ''))
            self.seed = int(seed.group(1)) if seed else None
        self.outputs = (meta['faceage.output.age'], meta['faceage.output.female'])

    def reading(self):
        """What must agree between files read on one set of crops."""
        return (self.size, tuple(self.mean), tuple(self.std), self.crop_scale, self.seed)


def read_split(cache, split, seed):
    """Board crops of the split (uint8, NHWC) with their labels."""
    faces, ages, female = [], [], []
    e, s = cache.extra, cache.input_size
    for img in cache.live_images():
        labels = utkface_labels(img['path'])
        if split_of(img['path'], seed) != split or 'Ok' not in img['outcome'] or labels is None:
            continue
        wide = np.frombuffer(cache.crop(img['outcome']['Ok'][1]), np.uint8).reshape(cache.side, cache.side, 3)
        faces.append(wide[e:e + s, e:e + s])
        ages.append(labels[0])
        female.append(labels[1])
    return np.stack(faces), np.array(ages, float), np.array(female)


def band_of(age):
    return np.clip(np.searchsorted(BAND_EDGES, age, side='right') - 1, 0, len(BAND_EDGES) - 2)


def read_model(model, faces):
    """Per face: age reading, p(female), and the probability mass per age band."""
    graph = model.graph
    bins = [onnx.numpy_helper.to_array(t).ravel() for t in graph.graph.initializer if t.name == 'age.bins']
    tensors = {o for n in graph.graph.node for o in n.output}
    distribution = next((d for d in DISTRIBUTIONS if d in tensors), None)
    if not bins or distribution is None:
        sys.exit(f'{model.path}: no age distribution ({" or ".join(DISTRIBUTIONS)}, age.bins) in the graph')
    graph.graph.output.append(onnx.helper.make_tensor_value_info(distribution, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options)
    band_matrix = np.stack([band_of(bins[0]) == k for k in range(len(BAND_EDGES) - 1)], axis=1).astype(np.float64)
    age, female, mass = [], [], []
    for i in range(0, len(faces), 256):
        x = ((faces[i:i + 256] / 255.0 - model.mean) / model.std).transpose(0, 3, 1, 2).astype(np.float32)
        a, f, p = session.run([*model.outputs, distribution], {model.input: x})
        age.append(a)
        female.append(f)
        mass.append(p @ band_matrix)
    return np.concatenate(age), np.concatenate(female), np.concatenate(mass)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--split', default='test', choices=['test', 'val'])
    ap.add_argument('--cache', help="crop cache file [default: the one under runs/cache for the files' input size]")
    ap.add_argument('--subsets', action='store_true')
    ap.add_argument('models', nargs='+', type=Path)
    args = ap.parse_args()
    models = [ModelFile(m) for m in args.models]
    if len({m.reading() for m in models}) != 1:
        sys.exit('the files read faces differently (size, normalisation, crop or split seed): '
                 + '; '.join(f'{m.name}: {m.reading()}' for m in models))
    first = models[0]
    if first.seed is None:
        sys.exit(f'{first.path}: its metadata does not say the split seed (faceage.train.data)')
    cache = args.cache or find_cache(Path(__file__).resolve().parent.parent / 'runs/cache', first.size)
    if cache is None:
        sys.exit(f'no {first.size} px crop cache under runs/cache: run faceage-host train --size {first.size} once')
    crops = CropCache(cache)
    if (crops.input_size, crops.crop_scale) != (first.size, first.crop_scale):
        sys.exit(f'{cache}: crops for {crops.input_size} px at scale {crops.crop_scale}, '
                 f'the files read {first.size} px at scale {first.crop_scale}')
    faces, ages, female = read_split(crops, args.split, first.seed)
    print(f'{args.split} split (seed {first.seed}): {len(ages)} faces ({cache})')
    readings = [read_model(m, faces) for m in models]

    truly = np.bincount(band_of(ages), minlength=len(BAND_EDGES) - 1)

    def figures(members):
        age = np.mean([readings[i][0] for i in members], axis=0)
        p_female = np.mean([readings[i][1] for i in members], axis=0)
        mass = np.mean([readings[i][2] for i in members], axis=0).sum(axis=0)
        read = np.bincount(band_of(age), minlength=len(truly))
        return (np.abs(age - ages).mean(), 100 * ((p_female > 0.5) == female).mean(),
                np.abs(read - truly).sum(), np.abs(mass - truly).sum())

    rows = [((i,), *figures([i])) for i in range(len(readings))]
    groups = [tuple(range(len(readings)))] if len(readings) > 1 else []
    if args.subsets:
        groups = [g for k in range(2, len(readings) + 1) for g in itertools.combinations(range(len(readings)), k)]
    ensembles = sorted(((g, *figures(g)) for g in groups), key=lambda r: r[1])
    for members, mae, acc, off_read, off_mass in rows + ensembles:
        name = ' + '.join(models[i].name for i in members)
        print(f'age MAE {mae:.2f}  gender {acc:.2f}%  bands off: read {off_read}, mass {off_mass:.0f}  {name}')


if __name__ == '__main__':
    main()

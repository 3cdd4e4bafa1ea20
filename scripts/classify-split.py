#!/usr/bin/env python3
"""How many faces `faceage classify` lists per photo, and its readings, on one split of UTKFace.

    python3 scripts/classify-split.py [--split test] [--seed 1] [--bin target/release/faceage]
        [--model models/faceage-f32.onnx] [UTKFACE_DIR]

Runs the board binary's `classify --json` over the split's chips (one face each, by the seeded
split every faceage tool uses) and prints the share of photos with exactly one face, the
photos with another count, and the age MAE and gender accuracy of the best-scoring face (the
face `faceage eval` reads). Standard library only; the model card's figures come from it.
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from crop_cache import split_of  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('data', nargs='?', default='../shared/datasets/utkface/UTKFace')
    p.add_argument('--split', default='test', choices=['train', 'val', 'test'])
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--bin', default='target/release/faceage')
    p.add_argument('--model', default='models/faceage-f32.onnx')
    p.add_argument('--detector', default='models/face_detection_back_256x256_barracuda.onnx')
    a = p.parse_args()
    names = sorted(f for f in os.listdir(a.data) if f.lower().endswith(('.jpg', '.jpeg', '.png')))
    files = [os.path.join(a.data, f) for f in names if split_of(f, a.seed) == a.split]
    photos = []
    for start in range(0, len(files), 200):
        out = subprocess.run([a.bin, 'classify', '--json', '--model', a.model, '--detector', a.detector,
                              *files[start:start + 200]], capture_output=True, text=True)
        if out.returncode != 0 and not out.stdout:
            sys.exit(f'{a.bin} classify failed: {out.stderr.strip()}')
        photos.extend(json.loads(out.stdout))
    counts = {}
    for photo in photos:
        counts[len(photo['faces'])] = counts.get(len(photo['faces']), 0) + 1
    one = counts.get(1, 0)
    print(f'{len(photos)} photos of the {a.split} split: exactly one face in {one} ({100 * one / len(photos):.2f}%);'
          f' faces per photo: {dict(sorted(counts.items()))}')
    for photo in photos:
        if len(photo['faces']) != 1:
            boxes = [(f['x'], f['y'], f['w'], f['score']) for f in photo['faces']]
            print(f"  {os.path.basename(photo['file'])}: {boxes}")
    read = errors = right = 0
    for photo in photos:
        if not photo['faces']:
            continue
        age, gender = os.path.basename(photo['file']).split('_')[:2]
        best = max(photo['faces'], key=lambda f: f['score'])
        read += 1
        errors += abs(best['age'] - int(age))
        right += (best['female'] >= 0.5) == (gender == '1')
    print(f'best face of each: {read} read, age MAE {errors / read:.2f} years, gender {100 * right / read:.2f}%')


if __name__ == '__main__':
    main()

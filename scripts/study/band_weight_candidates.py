#!/usr/bin/env python3
"""The candidates table of models/EXPERIMENTS.md "Band weights shipped, fitted on both data sets":
shown coverage per band on UTKFace's and FairFace's validation readings (files read without band
weights) for no weights, each data set's own fit, and the two fits' geometric mean (what
`faceage-host upgrade --band-weights A --band-weights B` writes). Numpy's groups, as in
band_weights.py, whose coverage and weighting it uses.

    faceage eval ~/UTKFace --split val --model FILE --readings utk.csv
    faceage eval ~/fairface/train.csv --split val --model FILE --readings ff.csv
    scripts/study/band_weight_candidates.py utk.csv ff.csv 0.505,0.272,1.068,1,1.204,1.714 1.601,0.880,1,1,1.016,1.275
"""
import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import band_weights as bw  # noqa: E402

# FairFace's age groups by counting band; 10-19 spans two bands and is left out, as eval does.
GROUPS = {"0-2": 0, "3-9": 1, "20-29": 3, "30-39": 3, "40-49": 4, "50-59": 4, "60-69": 5, "70+": 5,
          "more than 70": 5}


def load(path):
    shares, truth = [], []
    for r in csv.DictReader(open(path)):
        if r["outcome"] != "read" or r["band_0-2"] == "":
            continue
        age = r["age"]
        if age in GROUPS:
            band = GROUPS[age]
        elif "-" in age or "+" in age or "more" in age:
            continue
        else:
            band = next(i for i, (lo, hi) in enumerate(bw.BANDS) if lo <= float(age) < hi)
        p = np.array([float(r["band_" + n]) for n in bw.NAMES])
        shares.append(p / p.sum())
        truth.append(band)
    return np.array(shares), np.array(truth)


def main():
    utk, ff = load(sys.argv[1]), load(sys.argv[2])
    wu, wf = (np.array([float(x) for x in w.split(",")]) for w in sys.argv[3:5])
    for name, w in [("none", np.ones(6)), ("UTKFace's fit", wu), ("FairFace's fit", wf),
                    ("geometric mean", np.sqrt(wu * wf))]:
        cells = [np.round(bw.coverage(bw.apply(s, 1.0, w), t, seed=7), 1) for s, t in (utk, ff)]
        print(f"{name} {np.round(w, 3)}: UTKFace val {cells[0]}, FairFace val {cells[1]}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Band weights beside the band temperature, cross-validated on one split's readings.

The study behind models/EXPERIMENTS.md "Band weights beside the temperature": it reads the
`faceage eval --readings` file of a split (UTKFace-style exact ages), undoes the file's band
temperature, and for each half of the faces (seeded) fits on it and measures on the other half
the shown coverage of the count intervals, as `faceage eval` defines it (groups of 50 faces,
whole people by largest remainder, and the ±: RULE=within, the board's since 2026-12-07, the
least whole number holding every whole count within expected ± 2 sigma; RULE=round, before it,
2 sigma rounded): the file's temperature alone, the temperature refitted by the same rule as
`calibration::fit_temperature`, and a weight per band (the mean share made equal to each band's
frequency) with the temperature refitted, ROUNDS times (`calibration::fit_shares` does one).
Its groups are numpy's draws, not the board's: figures agree with `faceage eval` to a point or two.
The file given must be read without band weights (the study undoes its temperature only).

    faceage eval ~/UTKFace --split val --model models/faceage-f32.onnx --readings val.csv
    pip install numpy && RULE=within ROUNDS=1 scripts/study/band_weights.py val.csv 0.683
"""
import csv
import os
import sys

import numpy as np

BANDS = [(0, 3), (3, 13), (13, 20), (20, 40), (40, 60), (60, 1e9)]
NAMES = ["0-2", "3-12", "13-19", "20-39", "40-59", "60+"]


def load(path, file_t):
    shares, truth = [], []
    for r in csv.DictReader(open(path)):
        if r["outcome"] != "read" or r["band_0-2"] == "" or "-" in r["age"] or "+" in r["age"]:
            continue  # exact ages only: a group label may span two bands
        age = float(r["age"])
        truth.append(next(i for i, (lo, hi) in enumerate(BANDS) if lo <= age < hi))
        p = np.array([float(r["band_" + n]) for n in NAMES])
        q = np.where(p > 0, p ** file_t, 0)  # p = q^(1/t) / Z, so q is p^t renormalised
        shares.append(q / q.sum())
    return np.array(shares), np.array(truth)


def apply(q, t, w):
    x = np.where(q > 0, q ** (1 / t), 0) * w
    return x / x.sum(1, keepdims=True)


def largest_remainder(values, total):
    scaled = values * total / values.sum()
    whole = np.floor(scaled).astype(int)
    for i in np.argsort(-(scaled - np.floor(scaled)), kind="stable")[: total - whole.sum()]:
        whole[i] += 1
    return whole


RULE = os.environ.get("RULE", "within")


def half_width(expected, variance, shown):
    """The ± shown beside each whole count: 2 sigma rounded (`round`), or the least whole number
    that holds every whole count within expected ± 2 sigma (`within`)."""
    two_sigma = 2 * np.sqrt(variance)
    if RULE == "round":
        return np.floor(two_sigma + 0.5)
    low, high = np.ceil(expected - two_sigma - 1e-9), np.floor(expected + two_sigma + 1e-9)
    return np.maximum(np.maximum(shown - low, high - shown), 0)


def coverage(s, truth, groups=1000, size=50, seed=1):
    rng = np.random.default_rng(seed)
    covered = np.zeros(6)
    for _ in range(groups):
        idx = rng.choice(len(truth), size, replace=False)
        p = s[idx]
        expected, variance = p.sum(0), (p * (1 - p)).sum(0)
        count = np.bincount(truth[idx], minlength=6)
        shown = largest_remainder(expected, size)
        covered += np.abs(count - shown) <= half_width(expected, variance, shown)
    return 100 * covered / groups


def miss(c):
    outside = max(90 - c, c - 98, 0)
    return 100 * outside**2 + (c - 95) ** 2


def fit_t(q, truth, w):
    best = None
    for k in range(-40, 41):
        t = 2 ** (k / 20)
        m = sum(miss(c) for c in coverage(apply(q, t, w), truth, groups=400))
        if best is None or m < best[0]:
            best = (m, t)
    return best[1]


def fit_w(q, truth, t, rounds=50):
    freq = np.bincount(truth, minlength=6) / len(truth)
    w = np.ones(6)
    for _ in range(rounds):
        w = w * freq / np.maximum(apply(q, t, w).mean(0), 1e-9)
        w /= w[3]
    return w


def worst(cov):
    return max(max(90 - c, c - 98, 0) for c in cov)


def main():
    q, truth = load(sys.argv[1], float(sys.argv[2]))
    file_t = float(sys.argv[2])
    print(f"{len(truth)} faces; band frequency {np.round(np.bincount(truth, minlength=6) / len(truth), 3)}")
    print(f"mean share with the file's temperature {np.round(apply(q, file_t, np.ones(6)).mean(0), 3)}")
    order = np.random.default_rng(0).permutation(len(truth))
    halves = {"A": order[: len(truth) // 2], "B": order[len(truth) // 2 :]}
    for fit, test in [("A", "B"), ("B", "A")]:
        qf, tf, qt, tt = q[halves[fit]], truth[halves[fit]], q[halves[test]], truth[halves[test]]
        t = fit_t(qf, tf, np.ones(6))
        w, tw = np.ones(6), file_t
        for _ in range(int(os.environ.get("ROUNDS", "1"))):
            w = fit_w(qf, tf, tw)
            tw = fit_t(qf, tf, w)
        for name, cov in [
            ("file's temperature", coverage(apply(qt, file_t, np.ones(6)), tt, seed=7)),
            (f"temperature refitted ({t:.3f})", coverage(apply(qt, t, np.ones(6)), tt, seed=7)),
            (f"weights {np.round(w, 2)} at {tw:.3f}", coverage(apply(qt, tw, w), tt, seed=7)),
        ]:
            print(f"{fit} -> {test}: {name}: shown coverage {np.round(cov, 1)}, worst {worst(cov):.1f} outside")
    # Fitted on every face and measured on them (what a file would carry).
    w, tw = np.ones(6), file_t
    for _ in range(int(os.environ.get("ROUNDS", "1"))):
        w = fit_w(q, truth, tw)
        tw = fit_t(q, truth, w)
    cov = coverage(apply(q, tw, w), truth, seed=7)
    print(f"all -> all: weights {np.round(w, 2)} at {tw:.3f}: shown coverage {np.round(cov, 1)}")


if __name__ == "__main__":
    main()

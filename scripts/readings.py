#!/usr/bin/env python3
"""What `faceage eval --readings R.csv` files show past the averages (standard library only).

    python3 scripts/readings.py R.csv [R2.csv ...]

Prints, over all files together: the age bias (mean of read - true) and MAE per race group and
age band, and the gender accuracy at other cuts of p(female) than the board's 0.5, per file.
"""
import csv
import sys
from collections import defaultdict

BANDS = [("0-2", 3), ("3-12", 13), ("13-19", 20), ("20-39", 40), ("40-59", 60), ("60+", 1000)]
CUTS = [0.40, 0.45, 0.48, 0.50, 0.52, 0.55, 0.60]


def band(age):
    return next(name for name, upper in BANDS if age < upper)


def read(path):
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["outcome"] == "read"]


def main(paths):
    if not paths:
        sys.exit(__doc__)
    files = {p: read(p) for p in paths}
    errors = defaultdict(list)
    for rows in files.values():
        for r in rows:
            errors[(r["race"], band(float(r["age"])))].append(float(r["read_age"]) - float(r["age"]))
    print("age bias / MAE, years, by race group and band (faces)")
    print(f"{'':<8}" + "".join(f"{name:>20}" for name, _ in BANDS))
    for race in sorted({race for race, _ in errors}):
        cells = []
        for name, _ in BANDS:
            e = errors.get((race, name), [])
            cells.append(f"{sum(e) / len(e):+.1f} / {sum(map(abs, e)) / len(e):.1f} ({len(e)})" if e else "-")
        print(f"{race or '?':<8}" + "".join(f"{c:>20}" for c in cells))
    print("\ngender accuracy, %, by cut of p(female)")
    print(f"{'':<30}" + "".join(f"{c:>8.2f}" for c in CUTS))
    for path, rows in files.items():
        accuracy = [
            100 * sum((float(r["p_female"]) >= c) == (r["gender"] == "F") for r in rows) / len(rows) for c in CUTS
        ]
        print(f"{path[-30:]:<30}" + "".join(f"{a:>8.2f}" for a in accuracy))


if __name__ == "__main__":
    main(sys.argv[1:])

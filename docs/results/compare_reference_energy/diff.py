"""Relative change of the reference row's path metrics: energy at 1e-6 (and an exploratory run at
1e-5) against 1e-7, the same digits run and samples.

    python docs/results/compare_reference_energy/diff.py /tmp/cmp_digits_wt_cmp \
        /tmp/cmp_digits_main /tmp/cmp19
"""
import json
import sys

rows = [{(r["method"], r["budget"]): r for r in json.load(open(f"{d}/integrators.json"))}
        for d in sys.argv[1:]]
base = rows[0]
for label, other in zip(sys.argv[2:], rows[1:]):
    for key, r in base.items():
        for field in ("straightness", "energy_ratio"):
            a, b = r[field], other[key][field]
            print(f"{label}  {key[0]:7s} {str(key[1]):5s} {field:13s} {a:.9f} -> {b:.9f}"
                  f"  relative {(b - a) / a:+.2e}")

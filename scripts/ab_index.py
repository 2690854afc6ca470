#!/usr/bin/env python3
"""A/B of `search_bench` builds on the same codes: runs each binary in turn, `--rounds` times, for
every setting, so that machine noise falls on all of them alike, and checks that they return the
same distances. Codes come from `bench_index.py`'s generator (uniform and clustered, 100 queries).

Usage: .venv/bin/python scripts/ab_index.py BINARY [BINARY ...] [--n 1000000] [--bits 16,32,64]
       [--modes single,split,batch,batch2] [--k 10,100] [--rounds 2] [--idle-us N]
       [--kinds uniform,clustered]
Modes: `single` and `batch` on one thread, `split` and `batch2` (a batch) on two. Prints one line
per setting: milliseconds a query of each binary, one figure per round (the best run; with
`--idle-us`, the median of queries timed one by one after N µs of sleep each, single and split
only, and the distances are not compared). Each line ends with the two-thread scaling probe (`search_bench mode=scaling`) taken just
before it, since the host's load moves what a second thread gains.
"""

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_index import make_codes, ours, scaling  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bits", default="16,32,64")
    ap.add_argument("--modes", default="single,split,batch,batch2")
    ap.add_argument("--k", default="10,100")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle-us", type=int, default=None)
    ap.add_argument("--kinds", default="uniform,clustered")
    a = ap.parse_args()
    rng = np.random.default_rng(42)
    tmp = tempfile.mkdtemp(prefix="ab_index_")
    for kind in a.kinds.split(","):
        for bits in map(int, a.bits.split(",")):
            db, q = make_codes(kind, a.n, bits, 100, rng)
            codes, queries = os.path.join(tmp, "codes.bin"), os.path.join(tmp, "queries.bin")
            db.tofile(codes)
            q.tofile(queries)
            for mode in a.modes.split(","):
                threads = 2 if mode in ("split", "batch2") else 1
                for k in map(int, a.k.split(",")):
                    ms = {b: [] for b in a.binaries}
                    distances = {}
                    extra = () if a.idle_us is None else (f"idle_us={a.idle_us}",)
                    probe = scaling(a.binaries[0])
                    for _ in range(a.rounds):
                        for b in a.binaries:
                            r = ours(b, codes, queries, bits, k, threads, mode.rstrip("2"), "linear", extra=extra)
                            ms[b].append(1e3 * r.get("median_seconds", r.get("seconds_per_query")))
                            distances.setdefault(b, r.get("distances"))
                    if any(d != distances[a.binaries[0]] for d in distances.values()):
                        sys.exit(f"{kind} {bits} {mode} k {k}: the binaries return different distances")
                    cells = " | ".join(f"{os.path.basename(b)} " + " / ".join(f"{x:.4f}" for x in ms[b])
                                       for b in a.binaries)
                    print(f"{kind} {bits} {mode} {k} | {cells} | scaling {probe:.2f}x", flush=True)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""mAP@all benchmark (BENCHMARKS.md, "Evaluation (mAP)"): numpy's classic sort-based mAP against
hashsrv's counting-pass implementation (index/examples/map_npy.rs), on the same .npy files.

Writes clustered 64-bit codes (10 classes; each code is its class centre with every bit flipped
with probability FLIP) as float32 ±1 .npy files, times numpy's per-query stable argsort mAP on
the first NUMPY_QUERIES queries, then runs the Rust example on one thread on those queries and on
all queries, and prints both mAPs and the per-query speed ratio.

usage: .venv/bin/python scripts/bench_map.py [--numpy-queries N] [--out DIR]
"""
import argparse
import os
import subprocess
import sys
import time

# One core for numpy too (its BLAS would otherwise use every core for the distance products).
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

BITS, CLASSES, DATABASE, QUERIES, FLIP = 64, 10, 60_000, 10_000, 0.2


def clustered(rng, centres, n):
    labels = rng.integers(0, CLASSES, size=n)
    flips = rng.random((n, BITS)) < FLIP
    bits = centres[labels] ^ flips
    return np.where(bits, 1.0, -1.0).astype(np.float32), labels.astype(np.int64)


def numpy_map(db, db_labels, q, q_labels, tuned=False):
    """The classic deep-hashing mAP@all: rank by Hamming distance with a stable argsort per query
    (ties by database position), AP = mean precision at the relevant ranks. The classic code
    takes float distances from the ±1 inner product; `tuned` takes uint8 distances from popcounts
    of packed words instead, which lets numpy's stable sort use radix sort."""
    if tuned:
        db_words = np.packbits(db > 0, axis=1).view(">u8").ravel()
        q_words = np.packbits(q > 0, axis=1).view(">u8").ravel()
    aps = []
    for i in range(q.shape[0]):
        if tuned:
            hamming = np.bitwise_count(db_words ^ q_words[i]).astype(np.uint8)
        else:
            hamming = 0.5 * (BITS - db @ q[i])
        order = np.argsort(hamming, kind="stable")
        relevant = (db_labels[order] == q_labels[i]).astype(np.float64)
        total = relevant.sum()
        if total == 0:
            continue  # no relevant item: excluded, as hashsrv does
        hits = np.cumsum(relevant)
        ranks = np.arange(1, len(relevant) + 1)
        aps.append(float(np.sum(hits / ranks * relevant) / total))
    return float(np.mean(aps)), len(aps)


def run_rust(files, env):
    cmd = ["cargo", "run", "--release", "-q", "-p", "hashsrv-index", "--example", "map_npy", "--", *files]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    print("   ", out.strip().replace("\n", "\n    "))
    fields = out.strip().splitlines()[-1].split()
    return float(fields[2]), int(fields[4]), float(fields[8]), float(fields[10])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--numpy-queries", type=int, default=1000)
    parser.add_argument("--out", default="/tmp/hashsrv_bench_map")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(6)
    centres = rng.random((CLASSES, BITS)) < 0.5
    db, db_labels = clustered(rng, centres, DATABASE)
    q, q_labels = clustered(rng, centres, QUERIES)
    n = args.numpy_queries
    files = {
        "db": (db, "db.npy"), "dbl": (db_labels, "db_labels.npy"), "q": (q, "q.npy"), "ql": (q_labels, "q_labels.npy"),
        "qs": (q[:n], f"q_{n}.npy"), "qls": (q_labels[:n], f"q_labels_{n}.npy"),
    }
    path = {}
    for key, (arr, name) in files.items():
        path[key] = os.path.join(args.out, name)
        np.save(path[key], arr)

    print(f"{DATABASE} database x {QUERIES} queries, {BITS} bits, {CLASSES} classes, flip {FLIP}; numpy {np.__version__}")
    start, cpu_start = time.perf_counter(), time.process_time()
    np_map, np_evaluated = numpy_map(db, db_labels, q[:n], q_labels[:n])
    np_seconds, np_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"numpy stable-argsort mAP on {n} queries: {np_map:.15f} ({np_evaluated} evaluated) in {np_seconds:.2f} s"
          f" = {1e3 * np_seconds / n:.3f} ms/query; CPU {np_cpu:.2f} s")

    start, cpu_start = time.perf_counter(), time.process_time()
    tuned_map, _ = numpy_map(db, db_labels, q[:n], q_labels[:n], tuned=True)
    tuned_seconds, tuned_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"numpy tuned (uint8 popcount distances, radix stable argsort) mAP on {n} queries: {tuned_map:.15f}"
          f" in {tuned_seconds:.2f} s = {1e3 * tuned_seconds / n:.3f} ms/query; CPU {tuned_cpu:.2f} s")

    env = dict(os.environ, RAYON_NUM_THREADS="1")
    print(f"hashsrv map_npy, RAYON_NUM_THREADS=1, same {n} queries:")
    rs_map, rs_evaluated, rs_seconds, rs_cpu = run_rust([path["db"], path["dbl"], path["qs"], path["qls"]], env)
    print(f"hashsrv, RAYON_NUM_THREADS=1, all {QUERIES} queries, every tie mode:")
    run_rust([path["db"], path["dbl"], path["q"], path["ql"], "optimistic", "pessimistic", "expected", "index-order"], env)
    full_map, _, full_seconds, full_cpu = run_rust([path["db"], path["dbl"], path["q"], path["ql"]], env)

    diff = abs(rs_map - np_map)
    print(f"|mAP difference| on the same {n} queries: {diff:.3e} ({'agree' if diff <= 1e-9 else 'DISAGREE'} to 1e-9)")
    per_query_np, per_query_np_cpu = np_seconds / n, np_cpu / n
    print(f"speed-up per query, one core, wall clock: {per_query_np / (rs_seconds / n):.1f}x on {n} queries, "
          f"{per_query_np / (full_seconds / QUERIES):.1f}x against the {QUERIES}-query run")
    print(f"speed-up per query, CPU time: {per_query_np_cpu / (rs_cpu / n):.1f}x on {n} queries, "
          f"{per_query_np_cpu / (full_cpu / QUERIES):.1f}x against the {QUERIES}-query run")
    print(f"speed-up against tuned numpy: wall {tuned_seconds / rs_seconds:.1f}x, CPU {tuned_cpu / rs_cpu:.1f}x"
          f" on {n} queries")
    if diff > 1e-9 or abs(tuned_map - np_map) > 1e-9 or rs_evaluated != np_evaluated:
        sys.exit("mAP mismatch")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side index search benchmark: hashsrv-index against FAISS on the same codes, one run.

Generates codes (numpy, fixed seed): uniform, clustered (noisy copies of 300 centres, like trained
hash codes) and planted (uniform background plus near-duplicates within 3 bits of each query, for
multi-index hashing). Times FAISS IndexBinaryFlat (and IndexBinaryMultiHash where its recall is
1.0) and our `search_bench` example on the same packed codes, checks that both return the same
distances, and prints a Markdown table for BENCHMARKS.md.

Usage: .venv/bin/python scripts/bench_index.py [--n 1000000] [--quick] [--flat-only] [--bits 64] [--k 10]
       [--kinds uniform,clustered]
Installs faiss-cpu into the running venv if it is missing.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SEED = 20261129
# Built by `cargo build --release -p hashsrv-index --example search_bench`.
DEFAULT_BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "examples", "search_bench")


def ensure_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "faiss-cpu"], check=True)
    import faiss

    return faiss


def make_codes(kind, n, bits, nq, rng):
    nbytes = bits // 8
    if kind == "uniform":
        db = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
        q = rng.integers(0, 256, (nq, nbytes), dtype=np.uint8)
    elif kind == "clustered":
        centres = rng.integers(0, 2, (300, bits), dtype=np.uint8)
        def noisy(count, p):
            out = []
            for start in range(0, count, 100_000):
                x = centres[rng.integers(0, 300, min(100_000, count - start))]
                out.append(np.packbits(x ^ (rng.random(x.shape) < p).astype(np.uint8), axis=1))
            return np.concatenate(out)
        db, q = noisy(n, 0.08), noisy(nq, 0.08)
    else:  # planted: 20 near-duplicates (0..3 bits) of each query in a uniform background
        db = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
        q = rng.integers(0, 256, (nq, nbytes), dtype=np.uint8)
        qbits = np.unpackbits(q, axis=1)
        for i in range(nq):
            for _ in range(20):
                b = qbits[i].copy()
                b[rng.choice(bits, rng.integers(0, 4), replace=False)] ^= 1
                db[rng.integers(0, n)] = np.packbits(b)
    return np.ascontiguousarray(db), np.ascontiguousarray(q)


def ours(binary, codes_path, queries_path, bits, k, threads, mode, method, radius=None, repeats=3, extra=()):
    args = [binary, f"codes={codes_path}", f"queries={queries_path}", f"bits={bits}", f"k={k}",
            f"threads={threads}", f"mode={mode}", f"method={method}", f"repeats={repeats}", *extra]
    if radius is not None:
        args.append(f"radius={radius}")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def scaling(binary):
    """What two threads gain over one on scans that need no memory bandwidth (`mode=scaling`): the
    most a split query can gain at that moment, since the host shares this machine's cores."""
    out = subprocess.run([binary, "mode=scaling"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["two_thread_speedup"]


def ratio(a, b, digits=1):
    """a / b for a table cell; CPU time is counted in ticks, so b may be 0 on a very short run."""
    return f"{a / b:.{digits}f}" if b > 0 else "n/a"


def best_time(fn, repeats=3):
    """Best wall time and best CPU time (all threads) of `repeats` runs after a warm-up."""
    fn()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    return best, best_cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="fewer settings")
    ap.add_argument("--planner-only", action="store_true", help="only the Auto-vs-scan table")
    ap.add_argument("--flat-only", action="store_true", help="only the IndexBinaryFlat table")
    ap.add_argument("--bits", default=None, help="comma-separated code lengths (default 16,32,64,128)")
    ap.add_argument("--k", default=None, help="comma-separated k (default 10,100)")
    ap.add_argument("--kinds", default="uniform,clustered", help="comma-separated code kinds")
    ap.add_argument("--binary", default=os.environ.get("SEARCH_BENCH", DEFAULT_BINARY))
    a = ap.parse_args()
    faiss = ensure_faiss()
    rng = np.random.default_rng(SEED)
    tmp = tempfile.mkdtemp(prefix="bench_index_")
    if a.planner_only:
        planner(a, tmp, rng)
        return
    bw = {t: json.loads(subprocess.run([a.binary, "mode=bandwidth", "mb=256", f"threads={t}"],
                        check=True, capture_output=True, text=True).stdout)["gb_per_second"] for t in (1, 2)}
    print(f"measured read bandwidth (sum of 256 MiB per thread): 1 thread {bw[1]:.1f} GB/s, 2 threads {bw[2]:.1f} GB/s")
    print(f"two threads against one on cache-resident scans: {scaling(a.binary):.2f}x")
    print()
    print("| codes | bits | N | k | threads | mode | queries | FAISS ms/query | ours ms/query | speed-up "
          "| FAISS CPU ms/query | ours CPU ms/query | CPU speed-up | ours codes/s/core | ours GB/s | same distances |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    kinds = a.kinds.split(",")
    bit_list = [64, 16] if a.quick else [16, 32, 64, 128]
    if a.bits:
        bit_list = [int(b) for b in a.bits.split(",")]
    k_list = [10] if a.quick else [10, 100]
    if a.k:
        k_list = [int(k) for k in a.k.split(",")]
    for kind in kinds:
        for bits in bit_list:
            nq_batch = 1000
            db, q = make_codes(kind, a.n, bits, nq_batch, rng)
            cp, qp = os.path.join(tmp, "db.bin"), os.path.join(tmp, "q.bin")
            db.tofile(cp)
            q.tofile(qp)
            q_single = q[:100]
            q_single.tofile(qp + ".single")
            index = faiss.IndexBinaryFlat(bits)
            index.add(db)
            for k in k_list:
                for threads in (1, 2):
                    faiss.omp_set_num_threads(threads)
                    for mode in ("single", "batch"):
                        qq, qpath = (q_single, qp + ".single") if mode == "single" else (q, qp)
                        if mode == "single":
                            t, cpu = best_time(lambda: [index.search(qq[i:i + 1], k) for i in range(len(qq))])
                        else:
                            t, cpu = best_time(lambda: index.search(qq, k), repeats=1)
                        fd, _ = index.search(qq, k)
                        our_mode = "split" if (mode == "single" and threads == 2) else mode
                        r = ours(a.binary, cp, qpath, bits, k, threads, our_mode, "linear")
                        same = all(list(map(int, fd[i])) == r["distances"][i] for i in range(len(qq)))
                        print(f"| {kind} | {bits} | {a.n} | {k} | {threads} | {our_mode} | {len(qq)} | "
                              f"{1e3 * t / len(qq):.3f} | {1e3 * r['seconds_per_query']:.3f} | "
                              f"{t / len(qq) / r['seconds_per_query']:.1f}x | {1e3 * cpu / len(qq):.3f} | "
                              f"{1e3 * r['cpu_seconds_per_query']:.3f} | {ratio(cpu / len(qq), r['cpu_seconds_per_query'])}x | "
                              f"{r['codes_per_second_per_core'] / 1e9:.2f}e9 | "
                              f"{r['gb_per_second']:.1f} | {same} |", flush=True)
    if a.flat_only:
        return
    # Multi-index hashing: planted near-duplicates, radius 3, k 10, 64 bits.
    print()
    print("| codes | bits | N | k | radius | method | ms/query | speed-up vs our scan | MIH used (of 50) | same distances as scan |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
    bits = 64
    db, q = make_codes("planted", a.n, bits, 200, rng)
    cp, qp = os.path.join(tmp, "db.bin"), os.path.join(tmp, "q.bin")
    db.tofile(cp)
    q.tofile(qp)
    scan = ours(a.binary, cp, qp, bits, 10, 1, "single", "linear", radius=3)
    for method in ("linear", "mih", "auto"):
        r = scan if method == "linear" else ours(a.binary, cp, qp, bits, 10, 1, "single", method, radius=3, repeats=20)
        print(f"| planted | {bits} | {a.n} | 10 | 3 | ours {method} | {1e3 * r['seconds_per_query']:.4f} | "
              f"{scan['seconds_per_query'] / r['seconds_per_query']:.1f}x | {r['mih_used_of_first_50']} | "
              f"{r['distances'] == scan['distances']} |", flush=True)
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(db)
    lims, dist, _ = flat.range_search(q, 4)  # FAISS range search is d < radius
    truth = [sorted(dist[lims[i]:lims[i + 1]].tolist())[:10] for i in range(len(q))]
    for nhash, b in ((1, 16), (2, 16), (3, 21)):
        mh = faiss.IndexBinaryMultiHash(bits, nhash, b)
        mh.add(db)
        mh.nflip = 3
        t, _ = best_time(lambda: mh.search(q, 10))
        d, _ = mh.search(q, 10)
        got = [[int(x) for x in d[i] if x <= 3] for i in range(len(q))]
        recall = sum(g == t_ for g, t_ in zip(got, truth)) / len(q)
        print(f"| planted | {bits} | {a.n} | 10 | 3 | FAISS MultiHash nhash={nhash} b={b} nflip=3 | "
              f"{1e3 * t / len(q):.4f} | {scan['seconds_per_query'] / (t / len(q)):.1f}x | - | recall {recall:.2f} |",
              flush=True)
    print()
    planner(a, tmp, rng)


def planner(a, tmp, rng):
    """`Auto` against the scan where MIH should lose or win: it may not be much slower anywhere."""
    # Best run of each, scan and auto alternated twice: the mean CPU time of one run each moved by
    # 10-20% between runs on a virtual machine, as much as the gap this table checks.
    print("| codes | bits | N | k | radius | scan ms/query | auto ms/query | auto / scan | MIH used (of 50) | same distances |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind in ("uniform", "clustered", "planted"):
        for bits in (32, 64, 128):
            db, q = make_codes(kind, a.n, bits, 100, rng)
            cp, qp = os.path.join(tmp, "db.bin"), os.path.join(tmp, "q.bin")
            db.tofile(cp)
            q.tofile(qp)
            for k, radius in ((10, None), (100, None), (10, 3)):
                runs = [ours(a.binary, cp, qp, bits, k, 1, "single", method, radius=radius)
                        for _ in range(2) for method in ("linear", "auto")]
                scan = min(runs[0::2], key=lambda r: r["seconds_per_query"])
                auto = min(runs[1::2], key=lambda r: r["seconds_per_query"])
                print(f"| {kind} | {bits} | {a.n} | {k} | {radius if radius is not None else '-'} | "
                      f"{1e3 * scan['seconds_per_query']:.3f} | {1e3 * auto['seconds_per_query']:.3f} | "
                      f"{ratio(auto['seconds_per_query'], scan['seconds_per_query'], 2)} | "
                      f"{auto['mih_used_of_first_50']} | {auto['distances'] == scan['distances']} |", flush=True)


if __name__ == "__main__":
    main()

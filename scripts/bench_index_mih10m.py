#!/usr/bin/env python3
"""MIH at N = 10M (issue 3 target): planted 64-bit codes, radius 3, k 10, one thread; our scan vs
forced MIH vs Auto, same distances checked. Uses bench_index.py's generators."""
import os, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import bench_index as b
rng = np.random.default_rng(b.SEED)
tmp = tempfile.mkdtemp(prefix="mih10m_")
db, q = b.make_codes("planted", 10_000_000, 64, 200, rng)
cp, qp = os.path.join(tmp, "db.bin"), os.path.join(tmp, "q.bin")
db.tofile(cp); q.tofile(qp)
binary = os.environ.get("SEARCH_BENCH", b.DEFAULT_BINARY)
scan = b.ours(binary, cp, qp, 64, 10, 1, "single", "linear", radius=3, repeats=2)
for m in ("mih", "auto"):
    r = b.ours(binary, cp, qp, 64, 10, 1, "single", m, radius=3, repeats=20)
    print(m, "wall ms/q %.4f" % (1e3*r["seconds_per_query"]), "scan wall ms/q %.3f" % (1e3*scan["seconds_per_query"]),
          "scan cpu ms/q %.3f" % (1e3*scan["cpu_seconds_per_query"]), "mih cpu ms/q %.4f" % (1e3*r["cpu_seconds_per_query"]),
          "speedup wall %.0fx" % (scan["seconds_per_query"]/r["seconds_per_query"]), "same", r["distances"] == scan["distances"],
          "tables s %.2f" % r["mih_tables_seconds"], "used", r["mih_used_of_first_50"], flush=True)

#!/usr/bin/env python3
"""OpenMP wait policy of libtorch's threads during training: GNU OpenMP's default (spin, then
sleep) against PASSIVE (sleep at once), which `hashsrv-train` sets for itself unless
`OMP_WAIT_POLICY` is already set. Same command, same seed, runs alternated, one invocation.

Each run trains one epoch on a stratified subset of Fashion-MNIST and writes its index; the
training loss must be identical in both policies (the policy changes scheduling, not arithmetic).
Prints wall and CPU seconds per run and the medians as a Markdown table for BENCHMARKS.md,
with the machine's load average, since spinning costs most when cores are shared.

Usage: .venv/bin/python scripts/bench_omp_wait.py [--runs 3] [--limit-train 1600] [--threads 2]
Needs target/release/hashsrv-train (cargo build --release -p hashsrv-train).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(ROOT, "target", "release", "hashsrv-train")

# An empty value is "set" for hashsrv-train (so it does not restart itself) and unparsable for
# GNU OpenMP, which then keeps its default policy.
POLICIES = {"default (spin, then sleep)": "", "PASSIVE": "PASSIVE"}


def run_once(policy_value, args, out):
    env = dict(os.environ, OMP_WAIT_POLICY=policy_value, RUST_LOG="warn")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [TRAINER, "--dataset", "fashion-mnist", "--bits", "64", "--input-size", "32", "--stem", "imagenet",
         "--epochs", "1", "--limit-train", str(args.limit_train), "--limit-test", "10",
         "--threads", str(args.threads), "--out", out],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "metrics.json")) as f:
        loss = json.load(f)["epochs"][0]["loss"]
    return wall, cpu, loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=1600)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = {name: [] for name in POLICIES}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for name, value in POLICIES.items():
                loads.append(os.getloadavg()[0])
                wall, cpu, loss = run_once(value, args, os.path.join(tmp, f"{i}-{value or 'default'}"))
                print(f"run {i + 1} {name}: wall {wall:.1f} s, cpu {cpu:.1f} s, loss {loss:.6f}", flush=True)
                results[name].append((wall, cpu, loss))
    losses = {round(r[2], 9) for rs in results.values() for r in rs}
    assert len(losses) == 1, f"the policy changed the training loss: {losses}"
    print()
    print(f"{args.limit_train} images ({int(args.limit_train * 0.9)} trained, all indexed), --threads {args.threads}, "
          f"{args.runs} runs each, alternated; load average during the runs {min(loads):.1f} to {max(loads):.1f}")
    print()
    print("| OpenMP wait policy | wall (s, median) | CPU (s, median) |")
    print("|---|---|---|")
    for name, rs in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rs):.1f} | {statistics.median(r[1] for r in rs):.1f} |")


if __name__ == "__main__":
    main()

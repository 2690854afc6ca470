#!/usr/bin/env python3
"""Training-step benchmark (BENCHMARKS.md, "Training"): our tch step against the same model, loss
and optimiser written in PyTorch, on the same libtorch, same thread count, same batch, one run.

Both sides are long-lived workers speaking one protocol on stdin/stdout (line "<steps>" ->
"<wall s> <cpu s> <loss>"): ours is `train_speed serve <threads> <size> <stem> <optimizer>
<precision>` (the release example, which calls `hashsrv_train::train::train_step`, the step the
trainer takes), PyTorch's is this script with `--worker`. The driver builds both networks, runs warm-up
steps on each (excluded), then alternates blocks of steps between the two (the order flips every
round) so both see the same machine load, and reports medians of the per-block images/s.

The step on both sides: ResNet-18 trunk (ImageNet stem, or the CIFAR-style small stem), FC to 64
bits, tanh; batch-all triplet loss (mean over the violated triplets, margin 20) plus the
quantization term computed for reporting; one fixed batch of 80 random 3xSxS images, 10 classes x
8; the loss and regulariser read back as numbers after each step, as the trainer does for its
progress bar. The optimiser and arithmetic (`--setups OPTIMIZER:PRECISION`):
- sgd: SGD lr 0.001, momentum 0.9, weight decay 5e-4 (libtorch's SGD on both sides);
- adamw: AdamW lr 0.001, weight decay 5e-4: ours fused (`hashsrv_train::optim::AdamW`), PyTorch's
  `torch.optim.AdamW(fused=True)`, its fastest on a CPU;
- fp32, or bf16: the trunk's forward pass under CPU autocast to bfloat16 with channels-last
  convolutions (ours through `HashNet::set_training_precision`, PyTorch's `torch.autocast("cpu")`
  and `memory_format=torch.channels_last`), the hash layer and loss in fp32.

usage: .venv/bin/python scripts/bench_train.py [--threads 1 2] [--recipes 32:imagenet 28:small]
                                               [--setups sgd:fp32 adamw:fp32 adamw:bf16]
                                               [--rounds 5] [--steps N] [--warmup 2]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

BITS, P, K, MARGIN = 64, 10, 8, 20.0
STAGES = (64, 128, 256, 512)


def worker(threads, size, stem, optimizer_name, precision):
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def conv(c_in, c_out, k, stride, padding):
        layer = nn.Conv2d(c_in, c_out, k, stride, padding, bias=False)
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        return layer

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1, self.bn1 = conv(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out)
            self.conv2, self.bn2 = conv(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(conv(c_in, c_out, 1, stride, 0), nn.BatchNorm2d(c_out))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            shortcut = x if self.downsample is None else self.downsample(x)
            return torch.relu(shortcut + y)

    class HashNet(nn.Module):
        def __init__(self):
            super().__init__()
            k, s, p = (7, 2, 3) if stem == "imagenet" else (3, 1, 1)
            self.conv1, self.bn1 = conv(3, 64, k, s, p), nn.BatchNorm2d(64)
            blocks, c_in = [], 64
            for stage, c_out in enumerate(STAGES):
                for block in range(2):
                    blocks.append(Block(c_in, c_out, 2 if stage > 0 and block == 0 else 1))
                    c_in = c_out
            self.blocks = nn.Sequential(*blocks)
            self.hash = nn.Linear(512, BITS)

        def trunk(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            if stem == "imagenet":
                y = F.max_pool2d(y, 3, 2, 1)
            return torch.flatten(F.adaptive_avg_pool2d(self.blocks(y), 1), 1)

        def forward(self, x):
            if precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = self.trunk(x.contiguous(memory_format=torch.channels_last))
                y = y.float()
            else:
                y = self.trunk(x)
            return torch.tanh(self.hash(y))

    def triplet_loss(features, labels):
        distances = (features.unsqueeze(1) - features.unsqueeze(0)).square().sum(-1)
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        positive = same & ~torch.eye(len(labels), dtype=torch.bool)
        mask = positive.unsqueeze(2) & (~same).unsqueeze(1)
        losses = (distances.unsqueeze(2) - distances.unsqueeze(1) + MARGIN).relu() * mask.float()
        active = int((losses > 0).sum().item())
        valid = int(mask.sum().item())  # reported by the trainer, so computed here too
        quantization = (features.abs() - 1).square().mean()
        return losses.sum() / max(active, 1), quantization, valid

    net = HashNet().train()
    if precision == "bf16":
        net = net.to(memory_format=torch.channels_last)
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(net.parameters(), lr=0.001, weight_decay=5e-4, fused=True)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    xs = torch.randn(P * K, 3, size, size)
    labels = torch.arange(P).repeat_interleave(K)

    def step():
        optimizer.zero_grad()
        loss, quantization, _ = triplet_loss(net(xs), labels)
        loss.backward()
        optimizer.step()
        return loss.item(), quantization.item()

    print("ready", flush=True)
    for line in sys.stdin:
        steps = int(line)
        wall, cpu, last = time.perf_counter(), time.process_time(), float("nan")
        for _ in range(steps):
            last, _ = step()
        print(time.perf_counter() - wall, time.process_time() - cpu, last, flush=True)


class Side:
    def __init__(self, name, cmd, env):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"{name} worker did not start (said {line!r})")

    def run(self, steps):
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} worker died")
        wall, cpu, loss = (float(x) for x in line.split())
        return wall, cpu, loss

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def target_dir(root):
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=5, metavar=("THREADS", "SIZE", "STEM", "OPTIMIZER", "PRECISION"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--recipes", nargs="+", default=["32:imagenet"], help="SIZE:STEM, e.g. 28:small")
    parser.add_argument("--setups", nargs="+", default=["sgd:fp32", "adamw:fp32", "adamw:bf16"],
                        help="OPTIMIZER:PRECISION (sgd or adamw : fp32 or bf16)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per block (default: about 5 s a block)")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        threads, size, stem, optimizer, precision = args.worker
        worker(int(threads), int(size), stem, optimizer, precision)
        return

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "hashsrv-train", "--example", "train_speed"],
                   cwd=root, check=True)
    ours_bin = os.path.join(target_dir(root), "release", "examples", "train_speed")
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)  # the thread count is set by each side's set_num_threads only

    print(f"batch {P * K} ({P} classes x {K}), {BITS} bits, {args.rounds} rounds, warm-up {args.warmup} steps")
    print(f"load average before: {os.getloadavg()}")
    rows = []
    for recipe, setup, threads in [(r, s, t) for r in args.recipes for s in args.setups for t in args.threads]:
        size, stem = recipe.split(":")
        optimizer, precision = setup.split(":")
        worker_args = [str(threads), size, stem, optimizer, precision]
        sides = [
            Side("tch", [ours_bin, "serve", *worker_args], env),
            Side("pytorch", [sys.executable, os.path.abspath(__file__), "--worker", *worker_args], env),
        ]
        for side in sides:
            side.run(args.warmup)
        steps = args.steps
        if steps is None:
            wall, _, _ = sides[0].run(1)
            steps = max(1, round(5.0 / wall))
        rates = {s.name: [] for s in sides}
        cpu_rates = {s.name: [] for s in sides}
        losses = {}
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                wall, cpu, loss = side.run(steps)
                rates[side.name].append(steps * P * K / wall)
                cpu_rates[side.name].append(steps * P * K / max(cpu, 1e-9))
                losses[side.name] = loss
        for side in sides:
            side.close()
        med = {n: statistics.median(v) for n, v in rates.items()}
        cpu_med = {n: statistics.median(v) for n, v in cpu_rates.items()}
        rows.append((size, stem, setup, threads, steps, med, cpu_med, rates, losses))
        print(f"{size}px {stem} {setup} {threads} thread(s): tch {med['tch']:.1f} img/s, pytorch {med['pytorch']:.1f} "
              f"img/s, ratio {med['tch'] / med['pytorch']:.3f}; blocks tch "
              f"{[round(x, 1) for x in rates['tch']]} pytorch {[round(x, 1) for x in rates['pytorch']]}; "
              f"last loss tch {losses['tch']:.3f} pytorch {losses['pytorch']:.3f}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print()
    print("| input | stem | optimiser:precision | threads | steps/block | tch img/s | PyTorch img/s "
          "| ratio tch/PyTorch | tch img/CPU-s | PyTorch img/CPU-s | CPU ratio |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, stem, setup, threads, steps, med, cpu_med, _, _ in rows:
        print(f"| {size} | {stem} | {setup} | {threads} | {steps} | {med['tch']:.1f} | {med['pytorch']:.1f} | "
              f"{med['tch'] / med['pytorch']:.3f} | {cpu_med['tch']:.1f} | {cpu_med['pytorch']:.1f} | "
              f"{cpu_med['tch'] / cpu_med['pytorch']:.3f} |")


if __name__ == "__main__":
    main()

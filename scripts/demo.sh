#!/usr/bin/env bash
# The README's main job (`make demo`): set up from nothing, train a hasher on Fashion-MNIST on the
# CPU, export ONNX, build the index, print the evaluation, and serve the search page.
# A second run reuses the artefacts in runs/ and starts serving at once; --retrain redoes them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

retrain=0
bits="${BITS:-64}"
epochs="${EPOCHS:-1}"
addr="${ADDR:-127.0.0.1:8080}"
for arg in "$@"; do
  case "$arg" in
    --retrain) retrain=1 ;;
    *) echo "demo.sh: unknown argument $arg (accepted: --retrain; env BITS, EPOCHS, ADDR)" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
# shellcheck disable=SC1091
source .venv/hashsrv.env
cargo build --release --locked -p hashsrv -p hashsrv-train
bin="$root/target/release"
run="$root/runs/fashion-mnist-$bits"
data=/usr/share/datasets/fashion-mnist

if [ "$retrain" = 1 ] || [ ! -f "$run/model.onnx" ] || [ ! -f "$run/train.hidx" ]; then
  rm -rf "$run.partial"
  # The recipe of the README's table: the cheapest ResNet-18 input (32 px, ImageNet stem: about
  # 100 images/s on two cores, so one epoch of the 54,000 fit images in about 9 minutes), AdamW
  # with a cosine schedule, and the hash-centre term beside the triplet loss (on a 10,000-image
  # subset it beat SGD at 0.001 and every other rate and loss we tried; see README, "Results").
  "$bin/hashsrv" train --dataset fashion-mnist --data "$data" --bits "$bits" --input-size 32 --stem imagenet \
    --optimizer adamw --lr 0.003 --schedule cosine --centres 1 --epochs "$epochs" --out "$run.partial"
  rm -rf "$run"
  mv "$run.partial" "$run"
fi

if [ ! -f "$run/report/metrics.json" ]; then
  "$bin/hashsrv" evaluate --dataset fashion-mnist --data "$data" --model "$run/model.onnx" \
    --index "$run/train.hidx" --out "$run/report"
else
  echo "[demo] reusing $run (evaluation in $run/report/metrics.json; --retrain to redo)"
fi
echo "[demo] serving http://$addr/ (Ctrl-C to stop)"
exec "$bin/hashsrv" serve --model "$run/model.onnx" --index "$run/train.hidx" --dataset fashion-mnist --data "$data" --addr "$addr"

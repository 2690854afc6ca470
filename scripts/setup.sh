#!/usr/bin/env bash
# Installs everything hashsrv needs on a fresh machine, idempotently:
#   - Debian packages: the Fashion-MNIST data set (the embedded default) and, with
#     --with-test-tools, headless Chromium and its chromedriver for the web-page tests;
#   - a project-local venv (.venv) holding the pinned native runtimes from PyPI:
#     torch==2.13.0 (libtorch for tch 0.26) and onnxruntime==1.31.1 (libonnxruntime.so);
#   - writes .venv/hashsrv.env, which the other scripts source to find both libraries.
# Nothing here downloads a binary outside the package registries.
set -euo pipefail
# ONNX Runtime's usage telemetry, also from the Python package this script imports: off.
export ORT_DISABLE_TELEMETRY=1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

with_test_tools=0
for arg in "$@"; do
  case "$arg" in
    --with-test-tools) with_test_tools=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

TORCH_VERSION=2.13.0
ORT_VERSION=1.31.1
VENV="$root/.venv"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------
apt_pkgs=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || apt_pkgs+=(dataset-fashion-mnist)
if [ "$with_test_tools" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || apt_pkgs+=(chromium-driver)
fi
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "setup.sh: need root (or sudo) to install Debian packages: ${apt_pkgs[*]}" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  say "installing Debian packages: ${apt_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

# --- Python venv with the pinned runtimes -----------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
have() { "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

# onnxruntime-gpu where an NVIDIA GPU is visible, the CPU wheel otherwise; both carry
# onnxruntime/capi/libonnxruntime.so.$ORT_VERSION.
ort_pkg=onnxruntime
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then ort_pkg=onnxruntime-gpu; fi

want=()
have torch "$TORCH_VERSION" || want+=("torch==$TORCH_VERSION")
have "$ort_pkg" "$ORT_VERSION" || want+=("$ort_pkg==$ORT_VERSION")
# numpy/scipy/onnx: test fixtures, the ONNX checker test and the bench peers.
have numpy "$("$VENV/bin/python" -c 'import numpy;print(numpy.__version__)' 2>/dev/null || echo none)" || want+=(numpy)
"$VENV/bin/python" -c 'import scipy' 2>/dev/null || want+=(scipy)
"$VENV/bin/python" -c 'import onnx' 2>/dev/null || want+=(onnx)
if [ "${#want[@]}" -gt 0 ]; then
  say "pip install ${want[*]} (torch and its CUDA libraries take about 5 GB; no wheel cache is kept)"
  "$VENV/bin/pip" install -q --no-cache-dir "${want[@]}"
fi

torch_lib="$("$VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
ort_lib="$("$VENV/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
ort_dylib="$ort_lib/libonnxruntime.so.$ORT_VERSION"
[ -f "$ort_dylib" ] || { echo "setup.sh: $ort_dylib not found in the $ort_pkg wheel" >&2; exit 1; }

cat > "$VENV/hashsrv.env" <<ENV
# Written by scripts/setup.sh; sourced by the project's scripts.
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=0
export PATH="$root/target/release:$VENV/bin:\$PATH"
export ORT_DYLIB_PATH="$ort_dylib"
# ONNX Runtime 1.29+ sends usage telemetry from Linux too; this is its only full opt-out.
export ORT_DISABLE_TELEMETRY=1
export LD_LIBRARY_PATH="$torch_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
say "ready: torch $TORCH_VERSION, $ort_pkg $ORT_VERSION ($ort_dylib)"

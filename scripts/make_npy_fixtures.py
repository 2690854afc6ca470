#!/usr/bin/env python3
"""Writes the small .npy fixtures of index/tests/npy.rs with the real numpy, plus expected.json:
for every code fixture the hex codes numpy computes (packbits of `x > 0`), for every label
fixture the labels. Run from the repository root: .venv/bin/python scripts/make_npy_fixtures.py"""
import json
import os

import numpy as np

OUT = os.path.join("index", "tests", "data", "npy")
rng = np.random.default_rng(2026)
expected = {"numpy": np.__version__, "codes": {}, "labels": {}}


def save(name, arr, version=None):
    path = os.path.join(OUT, name)
    if version is None:
        np.save(path, arr)
    else:
        with open(path, "wb") as f:
            np.lib.format.write_array(f, arr, version=version)


def codes(name, arr, version=None, packed_bits=None):
    save(name, arr, version)
    bits = arr > 0 if packed_bits is None else np.unpackbits(arr, axis=1)[:, :packed_bits].astype(bool)
    expected["codes"][name] = {
        "bits": int(bits.shape[1]),
        "packed_bits": packed_bits,
        "hex": [np.packbits(row).tobytes().hex() for row in bits],
    }


def labels(name, arr, value):
    save(name, arr)
    expected["labels"][name] = [int(v) for v in value]


os.makedirs(OUT, exist_ok=True)
raw = rng.standard_normal((6, 16)).astype(np.float32)
codes("codes_f32_pm1.npy", np.where(raw > 0, 1.0, -1.0).astype(np.float32))
raw64 = rng.standard_normal((5, 24))
raw64[0, 0], raw64[1, 1], raw64[2, 2] = 0.0, -0.0, 1e-300  # zero is not positive, tiny is
codes("codes_f64_raw.npy", raw64)
codes("codes_i8_pm1.npy", np.where(rng.standard_normal((4, 8)) > 0, 1, -1).astype(np.int8))
bits12 = (rng.standard_normal((4, 12)) > 0)
codes("codes_u8_01.npy", bits12.astype(np.uint8))
codes("codes_bool.npy", rng.standard_normal((3, 16)) > 0)
codes("codes_packed_12.npy", np.packbits(bits12, axis=1), packed_bits=12)
codes("codes_packed_64.npy", np.packbits(rng.standard_normal((7, 64)) > 0, axis=1), packed_bits=64)
codes("codes_f32_v2.npy", raw, version=(2, 0))
codes("codes_f32_v3.npy", raw, version=(3, 0))
codes("codes_empty.npy", np.zeros((0, 32), dtype=np.float32))

save("bad_fortran.npy", np.asfortranarray(raw))
save("bad_big_endian.npy", raw.astype(">f4"))
save("bad_3d.npy", raw.reshape(2, 3, 16))
save("bad_complex.npy", raw[:, :8].astype(np.complex64))
save("bad_u8_not_binary.npy", np.array([[0, 1, 2, 1, 0, 0, 0, 1]], dtype=np.uint8))

lab = rng.integers(0, 10, size=9)
labels("labels_i32.npy", lab.astype(np.int32), lab)
labels("labels_i64.npy", lab.astype(np.int64), lab)
labels("labels_u8.npy", lab.astype(np.uint8), lab)
labels("labels_onehot_f32.npy", np.eye(10, dtype=np.float32)[lab], lab)
labels("labels_onehot_u8.npy", np.eye(10, dtype=np.uint8)[lab], lab)
save("bad_labels_multihot.npy", np.array([[1, 0, 0], [0, 1, 1]], dtype=np.int64))
save("bad_labels_negative.npy", np.array([3, -1, 2], dtype=np.int64))
save("bad_labels_fraction.npy", np.array([1.0, 2.5], dtype=np.float64))
save("bad_labels_no_label.npy", np.array([[0, 1], [0, 0]], dtype=np.int8))

with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write("\n")

#!/usr/bin/env python3
"""Writes the tiny ONNX models the encoder and server tests run (committed; rerun only to change
them). Deterministic: fixed seed, no timestamps.

    .venv/bin/python scripts/make_test_model.py

- tests/fixtures/model/tiny.onnx: the hashsrv ONNX contract at toy size: input `images` f32
  [N,3,8,8] (already preprocessed), Flatten, Gemm to 16 outputs, Tanh, output `outputs` f32
  [N,16]; dynamic batch dimension; opset 17; metadata hashsrv.bits=16, hashsrv.preprocess =
  the serde JSON of `Preprocess::small(8)`, hashsrv.dataset, hashsrv.class_names,
  hashsrv.model_config.
- tests/fixtures/model/tiny_reference.json: a few input tensors with the outputs numpy computes
  for them (checked against onnxruntime here), so the Rust tests compare against an independent
  computation.
- tests/fixtures/model/bad_*.onnx: models that break one rule of the contract each, for the
  encoder's refusals.
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "model")
SIZE = 8
BITS = 16
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# serde_json of hashsrv::preprocess::Preprocess::small(8): f32 values print as their shortest form.
PREPROCESS = {
    "resize": {"exact": {"width": SIZE, "height": SIZE}},
    "crop": SIZE,
    "mean": [0.286, 0.286, 0.286],
    "std": [0.353, 0.353, 0.353],
}

rng = np.random.RandomState(20261129)
weight = (rng.randn(BITS, 3 * SIZE * SIZE) / np.sqrt(3 * SIZE * SIZE)).astype(np.float32)
bias = (rng.randn(BITS) * 0.1).astype(np.float32)


def model(input_name="images", output_name="outputs", input_type=TensorProto.FLOAT, size=SIZE, metadata=None):
    features = 3 * size * size
    w = weight if size == SIZE else np.zeros((BITS, features), np.float32)
    nodes = [
        helper.make_node("Flatten", [input_name], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "hash.weight", "hash.bias"], ["pre"], transB=1),
        helper.make_node("Tanh", ["pre"], [output_name]),
    ]
    if input_type != TensorProto.FLOAT:
        nodes[0].input[0] = "cast"
        nodes.insert(0, helper.make_node("Cast", [input_name], ["cast"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "tiny_hash",
        [helper.make_tensor_value_info(input_name, input_type, ["N", 3, size, size])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", BITS])],
        [numpy_helper.from_array(w, "hash.weight"), numpy_helper.from_array(bias, "hash.bias")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hashsrv-tests")
    m.ir_version = 8
    if metadata is None:
        metadata = default_metadata()
    helper.set_model_props(m, metadata)
    onnx.checker.check_model(m)
    return m


def default_metadata():
    return {
        "hashsrv.bits": str(BITS),
        "hashsrv.preprocess": json.dumps(PREPROCESS, separators=(",", ":")),
        "hashsrv.dataset": "fashion-mnist",
        "hashsrv.class_names": json.dumps(CLASSES),
        "hashsrv.model_config": json.dumps({"arch": "tiny-linear", "bits": BITS, "seed": 20261129}),
    }


def save(m, name):
    path = os.path.join(OUT, name)
    # No doc strings or timestamps: the bytes (and so the model's SHA-256) depend only on this script.
    onnx.save_model(m, path)
    print("wrote", os.path.relpath(path, ROOT), os.path.getsize(path), "bytes")
    return path


def main():
    os.makedirs(OUT, exist_ok=True)
    tiny = save(model(), "tiny.onnx")

    # Reference outputs, computed by numpy and checked against onnxruntime.
    inputs = rng.randn(4, 3, SIZE, SIZE).astype(np.float32)
    inputs[3] = 0.0  # all-zero input: outputs are tanh(bias)
    flat = inputs.reshape(4, -1).astype(np.float64)
    expected = np.tanh(flat @ weight.astype(np.float64).T + bias.astype(np.float64)).astype(np.float32)
    try:
        import onnxruntime as ort

        got = ort.InferenceSession(tiny, providers=["CPUExecutionProvider"]).run(None, {"images": inputs})[0]
        assert np.allclose(got, expected, atol=1e-5), np.abs(got - expected).max()
    except ImportError:
        print("onnxruntime not installed: reference not cross-checked")
    print("smallest |output| of the reference:", np.abs(expected).min())
    bits = (expected > 0).astype(np.uint8)
    with open(os.path.join(OUT, "tiny_reference.json"), "w") as f:
        json.dump(
            {
                "bits": BITS,
                "inputs": [x.ravel().tolist() for x in inputs],
                "outputs": [y.tolist() for y in expected],
                "codes_hex": [np.packbits(b).tobytes().hex() for b in bits],
                "min_abs_output": float(np.abs(expected).min()),
            },
            f,
        )
        f.write("\n")

    save(model(input_name="x"), "bad_input_name.onnx")
    save(model(output_name="y"), "bad_output_name.onnx")
    save(model(input_type=TensorProto.DOUBLE), "bad_input_dtype.onnx")
    save(model(size=4), "bad_input_size.onnx")  # 3x4x4 input, preprocess says 8
    no_bits = default_metadata()
    del no_bits["hashsrv.bits"]
    save(model(metadata=no_bits), "bad_no_bits.onnx")
    wrong_bits = default_metadata()
    wrong_bits["hashsrv.bits"] = "32"
    save(model(metadata=wrong_bits), "bad_bits_mismatch.onnx")
    bad_pre = default_metadata()
    bad_pre["hashsrv.preprocess"] = '{"resize":"sideways"}'
    save(model(metadata=bad_pre), "bad_preprocess.onnx")


if __name__ == "__main__":
    main()

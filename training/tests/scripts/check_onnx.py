"""Checks an exported model with the onnx package and describes it as JSON (for export tests).

  check_onnx.py MODEL.onnx -> {"ir_version", "opsets", "ops", "inputs", "outputs", "metadata",
                               "initializers"}; exits non-zero if onnx.checker rejects the model.
"""

import json
import sys

import onnx


def dims(value_info):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def main():
    model = onnx.load(sys.argv[1])
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    print(
        json.dumps(
            {
                "ir_version": model.ir_version,
                "opsets": {o.domain: o.version for o in model.opset_import},
                "ops": sorted({n.op_type for n in graph.node}),
                "inputs": {i.name: dims(i) for i in graph.input},
                "outputs": {o.name: dims(o) for o in graph.output},
                "metadata": {p.key: p.value for p in model.metadata_props},
                "initializers": len(graph.initializer),
            }
        )
    )


if __name__ == "__main__":
    main()

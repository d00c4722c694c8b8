"""One ONNX graph from two: an ``If`` on an input's length runs a short-sequence graph below a threshold and a
long-sequence graph from it on.

Chunked-scan graphs use it to run one-chunk trials through the direct Toeplitz graph: the same product, without
the scan levels that such a trial leaves empty (about 200 small nodes per S4 layer and step;
benchmarks/results/long_recordings_cpu.md). Both branches read the outer graph's inputs and initializers;
initializers with equal contents (the weights both graphs hold) are stored once.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _renamed_branch(
    model: onnx.ModelProto, prefix: str, shared: dict[str, str], initializers: list[onnx.TensorProto],
) -> onnx.GraphProto:
    """``model``'s graph as an ``If`` branch: every name but the graph inputs gets ``prefix``; its initializers
    move to ``initializers`` (one entry per distinct content: ``shared`` maps a content digest to its name)."""
    graph = model.graph
    inputs = {value.name for value in graph.input}
    names: dict[str, str] = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode() + np.ascontiguousarray(array).tobytes())
        key = digest.hexdigest()
        if key not in shared:
            shared[key] = prefix + tensor.name
            moved = onnx.TensorProto()
            moved.CopyFrom(tensor)
            moved.name = shared[key]
            initializers.append(moved)
        names[tensor.name] = shared[key]

    def rename(name: str) -> str:
        if not name or name in inputs:
            return name
        return names.setdefault(name, prefix + name)

    nodes = []
    for node in graph.node:
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            raise ValueError(f"node {node.name!r} ({node.op_type}) holds a subgraph; only flat graphs can be branches")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name if node.name else ""
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
        nodes.append(copy)
    outputs = []
    for value in graph.output:
        renamed = onnx.ValueInfoProto()
        renamed.CopyFrom(value)
        renamed.name = rename(value.name)
        outputs.append(renamed)
    return helper.make_graph(nodes, prefix.rstrip("/"), [], outputs)


def dispatch_by_length(
    short: onnx.ModelProto, long: onnx.ModelProto, length_input: str, below: int,
) -> onnx.ModelProto:
    """A model that runs ``short`` when ``length_input``'s last axis holds fewer than ``below`` bins, else ``long``.

    Both models take the same inputs and give the same outputs (names, types, order) from the same opsets; the
    result keeps ``long``'s inputs, outputs, opsets and metadata."""
    signature = [(v.name, v.type.tensor_type.elem_type) for v in short.graph.input]
    if signature != [(v.name, v.type.tensor_type.elem_type) for v in long.graph.input]:
        raise ValueError("the two graphs take different inputs")
    if [v.name for v in short.graph.output] != [v.name for v in long.graph.output]:
        raise ValueError("the two graphs give different outputs")
    if {(o.domain, o.version) for o in short.opset_import} != {(o.domain, o.version) for o in long.opset_import}:
        raise ValueError("the two graphs import different opsets")
    if length_input not in {name for name, _ in signature}:
        raise ValueError(f"{length_input!r} is not an input of the graphs")
    shared: dict[str, str] = {}
    initializers: list[onnx.TensorProto] = []
    then_branch = _renamed_branch(short, "short/", shared, initializers)
    else_branch = _renamed_branch(long, "long/", shared, initializers)
    initializers.append(numpy_helper.from_array(np.array([below], dtype=np.int64), "dispatch/below"))
    nodes = [
        helper.make_node("Shape", [length_input], ["dispatch/length"], name="dispatch/shape", start=-1),
        helper.make_node("Less", ["dispatch/length", "dispatch/below"], ["dispatch/short"], name="dispatch/less"),
        helper.make_node("If", ["dispatch/short"], [v.name for v in long.graph.output], name="dispatch/if",
                         then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(nodes, long.graph.name, list(long.graph.input), list(long.graph.output), initializers)
    model = helper.make_model(graph, opset_imports=list(long.opset_import), ir_version=long.ir_version,
                              producer_name=long.producer_name, producer_version=long.producer_version)
    for entry in long.metadata_props:
        model.metadata_props.add(key=entry.key, value=entry.value)
    onnx.checker.check_model(model)
    return model

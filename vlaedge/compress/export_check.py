"""The export's checks: the model in torch at the export batch (counting module calls), the traced graph
at other batch sizes, its unrolled loops, and where in the policy's modules a node comes from.

A dynamic-batch graph must run, and match torch, at batch sizes other than the one it was traced at.
The tracer records every shape it sees; a `x.view(2, -1)` traced at batch 2 becomes a Reshape to the
constant shape [2, -1], which ONNX Runtime only notices at another batch (as a Gemm "dimension mismatch"
deep in the graph, or silently as a wrong batch). Running the graph at two other batch sizes finds it;
the refusal names the Reshape whose constant shape holds the export batch and the module it comes from
(node names carry the module path: `/blocks.0/attn/Reshape_3`).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlaedge.errors import VlaedgeError, one_line
from vlaedge.models.base import Policy

if TYPE_CHECKING:
    import torch


def check_batches(policy: Policy, model: Path, batches: tuple[int, ...], export_batch: int, tolerance: float,
                  quantized: bool = False) -> str:
    """Runs `model` in ONNX Runtime CPU at each of `batches` on random valid feeds and compares with torch.

    Args:
        policy: the exported policy (its torch module is the reference).
        model: the .onnx file, with a dynamic batch axis.
        batches: the batch sizes to try, other than `export_batch`, e.g. (1, 3).
        export_batch: the batch the graph was traced at.
        tolerance: largest allowed |action difference|, % of each action dimension's range (FP32 graphs;
            quantized graphs are held to their output shapes here and to values by the export's frame
            check).
        quantized: the graph has Q/DQ nodes.

    Returns:
        A one-line note for the export summary.

    Raises:
        VlaedgeError: at some batch ONNX Runtime fails, returns another batch, or differs from torch; the
            message names the Reshape holding the export batch (and its module) when there is one.
    """
    import onnxruntime as ort

    from vlaedge import progress
    from vlaedge.runtimes.ort import ORT_ERRORS, session_options

    options = session_options(prepack=False)  # a one-off session: weights read as stored
    options.log_severity_level = 4  # a failure here is reported in one line, not in ONNX Runtime's log too
    try:
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as e:
        if quantized:  # FP8 / INT4 graphs hold TensorRT-only ops
            return "batch sizes not checked: ONNX Runtime cannot run this graph (check on TensorRT)"
        raise VlaedgeError(f"export: ONNX Runtime cannot load the exported graph: {one_line(e, 200)}",
                           "report a bug with the model's code: the exporter wrote a graph it cannot "
                           "run") from None
    names = list(policy.output_names)
    for batch in progress.track(batches, "export check: batch sizes"):
        feeds = policy.example_inputs(batch, seed=batch)
        try:
            out = dict(zip(names, session.run(names, feeds), strict=True))
        except ORT_ERRORS as e:
            raise _refusal(policy, model, batch, export_batch, *_ort_failure(str(e))) from None
        wrong = [f"{name} has batch {v.shape[0] if v.ndim else 'none'}" for name, v in out.items()
                 if v.ndim == 0 or v.shape[0] != batch]
        if wrong:
            raise _refusal(policy, model, batch, export_batch, f"output {wrong[0]}")
        reference = policy.decode(policy.run_torch(feeds))
        pct = float((np.abs(reference - policy.decode(out)) / policy.check_scale(reference)).max() * 100.0)
        if not quantized and pct > tolerance:
            raise _refusal(policy, model, batch, export_batch,
                           f"outputs differ from torch by {pct:.3f}% of their range (allowed "
                           f"{tolerance:g}%)")
    sizes = " and ".join(map(str, batches))
    return f"ONNX Runtime matches torch at batches {sizes} too (traced at batch {export_batch})"


def run_in_torch(policy: Policy, example: dict[str, np.ndarray], batch: int, dynamic: bool) -> Counter:
    """Runs the module once on `example` (the export batch), counting each submodule's calls.

    Args:
        policy: the policy to export.
        example: valid feeds at the export batch.
        batch: their batch size.
        dynamic: the export has a dynamic batch (the fix then offers `export.dynamic_batch: false`).

    Returns:
        Qualified submodule name ("" for the top module) -> calls in one forward (for `loop_notes`).

    Raises:
        VlaedgeError: the model fails in torch at this batch (naming the innermost module running) or
            returns an output of another batch.
    """
    calls: Counter = Counter()
    stack: list[str] = []
    names = {m: n for n, m in policy.module.named_modules()}

    def enter(module, _inputs) -> None:
        stack.append(names[module])
        calls[names[module]] += 1

    def leave(_module, _inputs, _output) -> None:
        stack.pop()

    hooks = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    fix = ("make the model take any batch (e.g. x.reshape(x.shape[0], -1) or x.flatten(1), not x.view(1, -1))"
           + (", or set export.dynamic_batch: false to export a batch-1 graph" if dynamic else ""))
    try:
        out = policy.run_torch(example)
    except (RuntimeError, ValueError, IndexError) as e:
        where = ""
        if stack:
            inner = stack[-1]
            where = (f" in module {inner} ({type(policy.module.get_submodule(inner)).__name__})" if inner
                     else f" in the forward of {type(policy.module).__name__}")
        raise VlaedgeError(f"export: {policy.name} fails in torch at batch {batch}{where}: "
                           f"{one_line(e, 200)}", fix) from None
    finally:
        for hook in hooks:
            hook.remove()
    for name, value in out.items():
        if value.ndim == 0 or value.shape[0] != batch:
            raise VlaedgeError(f"export: output {name} has shape {list(value.shape)} for inputs of batch "
                               f"{batch}: the model folds the batch into another dimension", fix)
    return calls


def _refusal(policy: Policy, model: Path, batch: int, export_batch: int, what: str,
             failing_node: str | None = None) -> VlaedgeError:
    reshape = _batch_reshape(model, export_batch)
    if reshape:
        name, shape = reshape
        where = f"{name} reshapes to the constant shape {shape} in {_module_of(policy, name)}"
    elif failing_node:
        where = f"the failing node is {failing_node} in {_module_of(policy, failing_node)}"
    else:
        where = "a shape in the graph holds the export batch"
    return VlaedgeError(
        f"export: the graph only runs at the export batch {export_batch}: at batch {batch} {what}; {where}",
        f"make that code follow the batch (x.reshape(x.shape[0], -1) or x.flatten(1), not "
        f"x.view({export_batch}, -1)), or set export.dynamic_batch: false to export a fixed batch-1 graph")


def _batch_reshape(model: Path, export_batch: int) -> tuple[str, list[int]] | None:
    """The first Reshape whose shape is a constant starting with the export batch: (node name, shape)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model), load_external_data=False).graph
    constants = {init.name: init for init in graph.initializer
                 if init.data_location != onnx.TensorProto.EXTERNAL}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    for node in graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            shape = numpy_helper.to_array(constants[node.input[1]]).reshape(-1).tolist()
            if shape and shape[0] == export_batch:
                return node.name, shape
    return None


def _ort_failure(message: str) -> tuple[str, str | None]:
    """What ONNX Runtime says went wrong, and the node it names ("... running Gemm node. Name:'/l/Gemm'
    Status Message: GEMM: Dimension mismatch ..."; fused nodes are named "fused /l/Gemm")."""
    node = re.search(r"Name:'(?:fused )?([^']+)'", message)
    status = re.search(r"Status Message: (.*)", message)
    what = one_line(status.group(1) if status else message, 120)
    if node:
        return f"ONNX Runtime fails in node {node.group(1)} ({what})", node.group(1)
    return f"ONNX Runtime fails ({what})", None


def _module_of(policy: Policy, node_name: str) -> str:
    """The module an exported node comes from, in words."""
    name = module_at(policy.module, _levels(node_name))
    if name:
        return f"module {name} ({type(policy.module.get_submodule(name)).__name__})"
    return f"the forward of {type(policy.module).__name__}"


def _levels(node_name: str) -> list[str]:
    return node_name.strip("/").split("/")[:-1]  # "/blocks.0/attn/MatMul_2" -> ["blocks.0", "attn"]


def module_at(module: torch.nn.Module, levels: list[str]) -> str | None:
    """The qualified name of the submodule the exporter's scope levels point at, or None.

    The legacy exporter names each called module by its last non-numeric name atom and the numeric ones
    after it (`layers.0.self_attn` -> `self_attn`, `blocks.0` -> `blocks.0`, `fuse.mix` -> `mix`), one
    level per call (`velocity.0` below `velocity`), with `_1`, `_2`... on a module traced several times.
    Node names are these levels joined by "/" (`/blocks.0/attn/MatMul_2`); scopes in its graph dump are
    `pkg.Class::name` levels.

    Args:
        module: the exported top module.
        levels: its scope levels below the top module, e.g. ["blocks.0", "attn"].

    Returns:
        e.g. "blocks.0.attn"; "" for no levels (the top module's own forward); None when not found.
    """
    names = [n for n, _ in module.named_modules() if n]
    current = ""
    for level in levels:
        prefix = f"{current}." if current else ""
        found = None
        for short in dict.fromkeys([level, re.sub(r"_\d+$", "", level)]):
            below = [n for n in names if n.startswith(prefix) and (n == short or n.endswith("." + short))]
            if below:
                found = min(below, key=len)
                break
        if found is None:
            return None
        current = found
    return current


def loop_notes(policy: Policy, calls: Counter, model: Path) -> list[str]:
    """One note per module with weights that ran several times in one forward (a loop such as the
    Euler steps of a flow-matching head, which the tracer unrolls), with the graph nodes of its copies.

    Args:
        policy: the exported policy.
        calls: how many times each submodule (qualified name) ran in one forward at the export batch.
        model: the exported .onnx file.

    Returns:
        e.g. ["module velocity runs 10 times per forward (...): the exporter unrolled it into 10 copies,
        40 of the graph's 131 nodes"]; only the outermost repeated module of a nest is named.
    """
    import onnx

    nodes = [n.name for n in onnx.load(str(model), load_external_data=False).graph.node]
    at: dict[str, str | None] = {}
    for node in nodes:
        scope = "/".join(_levels(node))
        if scope not in at:
            at[scope] = module_at(policy.module, _levels(node))
    owner = [at["/".join(_levels(node))] for node in nodes]
    notes = []
    for name, count in calls.items():
        if not name or count < 2 or calls[_called_parent(name, calls)] >= count:
            continue
        if next(policy.module.get_submodule(name).parameters(), None) is None:
            continue  # a reused activation or dropout, not a loop over weights
        inside = sum(o is not None and (o == name or o.startswith(name + ".")) for o in owner)
        notes.append(f"module {name} runs {count} times per forward (a loop, e.g. flow-matching steps, or a "
                     f"shared module): the exporter unrolled it into {count} copies, {inside} of the graph's "
                     f"{len(nodes)} nodes")
    return notes


def _called_parent(name: str, calls: Counter) -> str:
    """The nearest enclosing module that ran ("" is the top module)."""
    parts = name.split(".")[:-1]
    while parts and ".".join(parts) not in calls:
        parts.pop()
    return ".".join(parts)

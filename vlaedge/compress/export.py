"""Export, the public verb: `export_onnx` writes a policy as one ONNX graph (`export_graph`) or, for a
policy that declares stages (vision, prefix, an expert run in a denoise loop), one graph per stage plus
`stages.json` (`export_stages`; `export.stages: false` forces one graph).

Both are checked against torch in ONNX Runtime and leave nothing at `path` when refused; see
`vlaedge.compress.export_graph` for what real VLAs contain and how the export handles it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlaedge.compress.export_graph import (
    EXPORT_BATCH,
    ExportCheck,
    ExportResult,
    check_against_torch,
    export_graph,
)
from vlaedge.compress.export_stages import export_stages, stages_enabled
from vlaedge.models.base import Policy
from vlaedge.recipe import ExportConfig

__all__ = ["EXPORT_BATCH", "ExportCheck", "ExportResult", "check_against_torch", "export_onnx"]


def export_onnx(policy: Policy, path: str | Path, config: ExportConfig | None = None,
                check_feeds: dict[str, np.ndarray] | None = None,
                precision: str | None = None) -> ExportResult:
    """Exports `policy.module` (FP32, or fake-quantized by ModelOpt) to ONNX and checks it.

    Args:
        policy: the policy; its `input_spec` and `output_names` name the graph's inputs and outputs.
        path: the .onnx file to write (a staged policy: `stages.json` and `stages/<name>.onnx` beside it).
        config: export settings (defaults: opset 17, dynamic batch, stages when declared).
        check_feeds: feeds (e.g. calibration frames) on which ONNX Runtime must match torch.
        precision: the quantized precision, if any ("fp8" raises the opset to 19).

    Returns:
        The export result (a `StagedExportResult`, with per-stage parity, for a staged policy).

    Raises:
        VlaedgeError: see `export_graph` and `export_stages`; nothing is left at `path`.

    Example:
        >>> result = export_onnx(policy, "out/model.onnx", check_feeds=policy.example_inputs(8))
    """
    config = config or ExportConfig()
    if stages_enabled(policy, config):
        return export_stages(policy, path, config, check_feeds, precision)
    return export_graph(policy, path, config, check_feeds, precision)

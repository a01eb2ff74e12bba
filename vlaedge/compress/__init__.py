"""Compress: make the policy smaller and faster before it leaves torch.

Three stages, each one module with one public verb taking its recipe section:
- `prune.prune(policy, PruneConfig, feeds)`: structured pruning (heads, MLP channels, blocks) or 2:4
  sparsity, with importance from calibration frames and a recovery distillation (`prune_ops` holds the
  module surgery);
- `quantize.quantize(policy, QuantizeConfig, feeds, target)`: INT8 / FP8 / weight-only post-training
  quantization, ModelOpt Q/DQ for TensorRT targets or ONNX Runtime static QDQ for CPU (`quant_report`
  says which nodes and modules were quantized);
- `export.export_onnx(policy, path, ExportConfig, check_feeds)`: ONNX with named I/O and a dynamic batch,
  checked against torch in ONNX Runtime.
`vlaedge.pipeline` runs them in that order; nothing here imports the pipeline, the CLI or another wing.
"""

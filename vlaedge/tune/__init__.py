"""`vlaedge tune`: measure a declared space of quantization variants and choose the fastest one that keeps
every budget, instead of guessing it.

1. Explore on the calibration split: every variant of the space (`vlaedge.tune.space`) is quantized from
   the same FP32 export and calibration frames `vlaedge compress` uses, and its action drift against the
   FP32 policy is measured on search frames drawn from the calibration split.
2. FP32 fallback by action sensitivity: when no variant keeps the drift budgets there, each module group
   (`space.module_group`) is quantized alone (everything else FP32) on the variant with the lowest search
   drift, the groups are ranked by how much that moves the actions, and the most sensitive are kept in
   FP32 one at a time until the drift budgets hold (like NNCF's accuracy control, on action drift).
3. Measure: drift on the evaluation split (the recipe's verify frames and seed), and latency of FP32 and
   every variant in ONE interleaved run on the verify runtime (`vlaedge.check.profile`); for TensorRT
   targets latency is `vlaedge.deploy.estimate`'s roofline since no device is here.
4. Choose: the Pareto front over (drift, median latency, file size), the fastest variant within every
   budget (FP32 when nothing quantized is faster), and a plain recipe that reproduces it.

Steps 1-3's builds and drift run as units on an executor (`vlaedge.tune.fanout`, `vlaedge.executor`: here by
default, or Ray tasks with `--executor ray`); the latency run never does: it is one interleaved run on one
node (this one, or the node with `executor.timing_resource`), named in tune.json (`timing_node`) and tune.md.

Output directory: tune.json, tune.md, tune.html (Pareto plot), recipe.yaml (only when something is within
every budget), and variants/ (each variant's .onnx and its cached result: a rerun with the same inputs
resumes, rebuilding only what changed and what does not validate, `vlaedge.tune.cache`). It is refused,
locked, staged and moved into place as `vlaedge compress`'s output is (`vlaedge.tune.output`).
"""
from vlaedge.tune.run import tune
from vlaedge.tune.work import TuneResult

__all__ = ["TuneResult", "tune"]

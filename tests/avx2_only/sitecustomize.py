"""`make test-avx2`: the test suite as vlaedge runs on an AVX2-only x86 CPU, on any x86 CPU.

Put on PYTHONPATH (the suite's subprocesses inherit it), this hides the int8 dot-product flags
(AVX512-VNNI, AVX-VNNI, AMX-INT8) from `vlaedge.info.cpu_features`, so every decision vlaedge takes from
the CPU is the AVX2-only one: 7-bit weights in ONNX Runtime INT8 (`quantize.reduce_range`), the report's
"no int8 dot-product instruction" reason. The arithmetic is then the AVX2 CPU's too, up to float rounding:
with 7-bit weights a pair of u8 x s7 products (at most 2 * 255 * 64 = 32,640) fits the int16 that AVX2's
vpmaddubsw sums into, so AVX2 and VNNI kernels compute the same integers; only ONNX Runtime's float
kernels (LayerNorm, Softmax, FP32 MatMul) differ in their last bits.
"""

try:
    import vlaedge.info as _info
except ImportError:  # an interpreter without vlaedge (the wheel test's fresh venv, pip)
    pass
else:
    _features = _info.cpu_features
    _INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")
    _info.cpu_features = lambda: [f for f in _features() if f not in _INT8_DOT]

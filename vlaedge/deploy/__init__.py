"""Deploy: from an exported ONNX to what runs on the Jetson, and what it will cost there.

- `engine.build_engine(onnx, EngineConfig, target, precision, out)`: the on-device build bundle
  (`bundle`: build.sh / profile.sh for trtexec) and, where TensorRT and a GPU are present, the plan itself
  (`trt_build`, the TensorRT Python API build and its layer-precision check);
- `remote.profile_remote(host, model, ...)`: profiles a model on a device over SSH;
- `jetson`: Jetson telemetry (tegrastats, nvpmodel, jetson_clocks) for profiles taken on the device;
- `estimate.estimate(onnx, target)`: a roofline latency and memory estimate for a target, before one
  owns the hardware.
Plan files themselves (sidecar, compatibility check) belong to `vlaedge.runtimes.plan`, which the `trt`
runtime shares. Nothing here imports the pipeline, the CLI or another wing.
"""

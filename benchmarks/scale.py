"""Real-size benchmark: the shipped examples scaled to the widths of real VLAs, through vlaedge's CLI.

Each size is the example's own `policy.py` with a config of a published model's widths and depths, written
as a sharded safetensors checkpoint with seeded random weights (no hub; random weights are enough for
memory and time, never for accuracy):

- `100m` (openvla_style, ~126 M): a 6-layer SigLIP-B/16 at 224 px and a 12-layer 768-wide Llama (GQA 12/4),
  256-bin action tokens.
- `smolvla` (smolvla_style, ~390 M): SmolVLA's widths: SigLIP-B/16 at 384 px, a 960-wide GQA (15/5) 16-layer
  prefix (SmolVLM2's), a 720-wide 16-layer flow-matching expert, 49,280 words, chunk 50, 10 Euler steps.
- `pi0` (smolvla_style, ~3.3 B): pi0's widths: SigLIP So400m/14 at 224 px, a Gemma-2B-like 2048-wide
  18-layer prefix (MQA 8/1, 257,152 words), a Gemma-300M-like 1024-wide 18-layer expert, chunk 50.

Every step runs as its own process under `/usr/bin/time -v` (wall time and peak RSS of the process, the
figures the issue's targets are about): `load` (vlaedge.models.load_policy), `export` (vlaedge export),
and `vlaedge compress` with `cpu-int8` and `orin-int8` (each compress runs its own verify and profile; the
INT8 / FP32 speed ratio is read from its report.json). A step that exceeds `--timeout` is stopped and
reported as such. The machine (CPU model, AVX2 / AVX512-VNNI, cores, memory) and its load average before
and after each step are written with the results.

Usage (from the repository root; heavy: minutes to hours, run on a quiet machine):

    .venv/bin/python benchmarks/scale.py --size 100m --size smolvla --work runs/scale
    .venv/bin/python benchmarks/scale.py --size pi0 --steps load,export --dtype bfloat16 --work runs/scale
    .venv/bin/python benchmarks/scale.py --size pi0 --steps cpu-int8 --set quantize.stages.prefix=fp32
    .venv/bin/python benchmarks/scale.py --size smolvla --steps cpu-int8 --device cuda   # on a CUDA machine

Writes `benchmarks/results/scale.md` and `.json` (`--out`); a step's new row replaces that size's previous
row of the step (the others stay, each with the command that measured it and when), so sizes and steps
can be run one at a time; notes written by hand below the tables are kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SHARD_BYTES = 2 * 1024**3  # at most 2 GiB per safetensors shard, as save_pretrained's default 5 GB or less

SIGLIP_B16 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
              "num_attention_heads": 12, "patch_size": 16, "vision_use_head": False}
SIZES = {
    "100m": {"example": "openvla_style", "image": 224, "kwargs": {
        "vision_config": {**SIGLIP_B16, "image_size": 224, "num_hidden_layers": 6},
        "text_config": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "num_key_value_heads": 4,
                        "max_position_embeddings": 512}}},
    "smolvla": {"example": "smolvla_style", "image": 384, "kwargs": {
        "vision_config": {**SIGLIP_B16, "image_size": 384},
        "text_config": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 16,
                        "num_attention_heads": 15, "num_key_value_heads": 5, "max_position_embeddings": 1024},
        "expert_config": {"hidden_size": 720, "intermediate_size": 2048, "num_hidden_layers": 16,
                          "num_attention_heads": 12, "num_key_value_heads": 4,
                          "max_position_embeddings": 256},
        "vocab_size": 49280, "chunk": 50}},
    "pi0": {"example": "smolvla_style", "image": 224, "kwargs": {
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                          "num_attention_heads": 16, "patch_size": 14, "image_size": 224,
                          "vision_use_head": False},
        "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                        "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
                        "max_position_embeddings": 1024},
        "expert_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 18,
                          "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
                          "max_position_embeddings": 256},
        "vocab_size": 257152, "chunk": 50}},
}
STEPS = ("load", "export", "cpu-int8", "orin-int8")
# Random weights have no closed-loop success to lose: the compress steps skip the closed loop (and its
# budget), plot no action traces (up to 240 more frames through both models, saying nothing on random
# weights) and measure drift on 64 evaluation frames; everything else is the shipped recipe.
COMPRESS_SETTINGS = ("--set", "verify.closed_loop_episodes=0", "--set", "budgets.max_success_drop=null",
                     "--set", "verify.trace_episodes=0", "--set", "verify.eval_frames=64")


def build_checkpoint(size: str, folder: Path, seed: int = 0) -> dict:
    """Writes the `size` policy as a sharded safetensors checkpoint in `folder` (policy.py + config.json).

    The module is built on the meta device (no memory), then each tensor is drawn (normal, std 0.02; norm
    weights 1, biases 0), seeded by `seed` and its name, and written shard by shard, so building needs
    about one shard of memory, not the model.

    Returns:
        {"parameters": int, "fp32_bytes": int, "stored_bytes": int}
    """
    from safetensors.torch import save_file

    spec = SIZES[size]
    example = ROOT / "examples" / spec["example"]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(example / "policy.py", folder / "policy.py")
    config = json.loads((example / "config.json").read_text())
    config["factory_kwargs"] = {**config.get("factory_kwargs", {}), **spec["kwargs"]}
    for entry in config["inputs"]:
        if entry["name"] == "image":
            entry["shape"] = ["B", 3, spec["image"], spec["image"]]
        if entry["name"] == "noise":
            entry["shape"] = ["B", spec["kwargs"].get("chunk", 4), entry["shape"][2]]
    if "chunk" in spec["kwargs"]:
        config["actions"]["chunk"] = spec["kwargs"]["chunk"]
    module = _meta_module(folder / "policy.py", config["factory_kwargs"])
    shards, current, current_bytes, index, total = [], {}, 0, {}, 0
    for name, meta in module.state_dict().items():
        tensor = _draw(name, meta, seed)
        if current and current_bytes + tensor.nbytes > SHARD_BYTES:
            shards.append(current)
            current, current_bytes = {}, 0
        current[name] = tensor
        current_bytes += tensor.nbytes
        total += tensor.numel()
    shards.append(current)
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, file))
        shards[i - 1] = None  # free the shard
    stored = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": stored}, "weight_map": index}, indent=1))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return {"parameters": total, "fp32_bytes": 4 * total, "stored_bytes": stored}


def _meta_module(policy_file: Path, kwargs: dict):
    import torch

    spec = importlib.util.spec_from_file_location(f"scale_policy_{os.getpid()}", policy_file)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    with torch.device("meta"):
        return code.build(**kwargs)


def _draw(name: str, meta, seed: int):
    import zlib

    import torch

    if meta.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return torch.zeros(meta.shape, dtype=meta.dtype)
    if name.endswith("bias") or "fusion_gate" in name:
        return torch.zeros(meta.shape)
    if meta.dim() == 1 and "norm" in name:
        return torch.ones(meta.shape)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(meta.shape, generator=gen) * 0.02


def run_step(step: str, checkpoint: Path, work: Path, timeout: int, dtype: str | None,
             calib_frames: int | None = None, settings: tuple[str, ...] = (),
             device: str | None = None) -> dict:
    """Runs one step as a child process under /usr/bin/time -v: its wall time, peak RSS and outcome.
    `calib_frames` replaces the recipe's quantize.num_calib_frames in the compress steps; `settings`
    (KEY=VALUE) are passed to them as `--set`; `device` (auto, cpu, cuda) as `--device` (where the torch
    side of compress runs; the export traces on the CPU whatever it is)."""
    out = work / step
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--dtype", dtype] if dtype else []
    if calib_frames and step not in ("load", "export"):
        extra += ["--set", f"quantize.num_calib_frames={calib_frames}"]
    if device and step not in ("load", "export"):
        extra += ["--device", device]
    if step == "load":
        code = ("import re, sys, torch, transformers; from vlaedge.models import load_policy; "
                "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
                "print('imports_kb', hwm, flush=True); p = load_policy(sys.argv[1], trust_code=True)")
        cmd = [str(VENV_BIN / "python"), "-c", code, str(checkpoint)]
    elif step == "export":
        cmd = [str(VENV_BIN / "vlaedge"), "export", str(checkpoint), "--trust-code", "--out",
               str(out / "model.onnx"), *extra]
    else:
        cmd = [str(VENV_BIN / "vlaedge"), "compress", str(checkpoint), "--recipe", step, "--trust-code",
               "--out", str(out), *extra, *COMPRESS_SETTINGS, *(a for kv in settings for a in ("--set", kv))]
    load_before = os.getloadavg()
    start = time.monotonic()
    try:
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = "timeout", b"".join(x or b"" for x in (e.stdout, e.stderr)).decode(errors="replace")
    row = {"step": step, "command": " ".join(cmd[1:] if step != "load" else ["load_policy", str(checkpoint)]),
           "rc": rc, "wall_s": round(time.monotonic() - start, 1), "load_before": load_before,
           "load_after": os.getloadavg(), "peak_rss_gb": _peak_rss_gb(log),
           "files_mb": _files_mb(out), "error": _error_line(log) if rc not in (0, 1) else None}
    if rc == "timeout":
        row["error"] = f"stopped at the {timeout} s limit; its last line: {row['error']}"
    imports = re.search(r"^imports_kb (\d+)", log, re.M)
    if imports and row["peak_rss_gb"] is not None:  # the load's own peak, above torch + transformers imported
        row["above_imports_gb"] = round(row["peak_rss_gb"] - int(imports.group(1)) / 1024**2, 2)
    row.update(_report_figures(out))
    (work / f"{step}.log").write_text(log)
    return row


def _peak_rss_gb(log: str) -> float | None:
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log)
    return round(int(found.group(1)) / 1024**2, 2) if found else None


def _files_mb(out: Path) -> dict:
    if not out.is_dir():
        return {}
    return {str(p.relative_to(out)): round(p.stat().st_size / 1e6, 1)
            for p in sorted(out.rglob("*")) if p.is_file() and p.suffix in (".onnx", ".data", ".plan")}


def _error_line(log: str) -> str | None:
    lines = [ln for ln in log.splitlines() if ln.startswith(("error:", "internal error:", "Traceback"))]
    return lines[-1][:300] if lines else (log.strip().splitlines() or ["(no output)"])[-1][:300]


def _report_figures(out: Path) -> dict:
    """INT8 speed over FP32 (median) and drift (% of range) from a compress run's report.json, if any."""
    report = out / "report.json"
    if not report.is_file():
        return {}
    data = json.loads(report.read_text())
    figures = {}
    baseline = data.get("baseline") or {}
    if baseline.get("median_speedup") is not None:  # the candidate against FP32 ONNX, timed interleaved
        figures["speedup_vs_fp32"] = round(baseline["median_speedup"], 2)
    if data.get("drift"):
        figures["drift_mean_pct"] = data["drift"]["mean_pct"]
    return figures


def machine() -> dict:
    """CPU model, the instruction sets that decide INT8 speed on CPU, cores and memory."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    flags = set(found.group(1).split()) if found else set()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    return {"cpu": model.group(1) if model else platform.processor(), "cores": os.cpu_count(),
            "avx2": "avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "memory_gb": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
            "python": platform.python_version()}


SIZE_HEADING = re.compile(r"^## \w+: [\d,]+ M parameters")


def write_results(results: dict, out: Path) -> None:
    """Writes `out` (.md) and its .json; `results` is {"machine", "sizes": {size: {"checkpoint", "steps"}}},
    each step row with the scale.py command that measured it and when. Notes written by hand below the
    tables (from the first `## ` heading that is not a size's) are kept."""
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    m = results["machine"]
    lines = ["# Real-size benchmark", "", f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; "
             f"AVX2 {'yes' if m['avx2'] else 'no'}, AVX512-VNNI {'yes' if m['avx512_vnni'] else 'no'}. "
             "Wall time and peak RSS per step from `/usr/bin/time -v` on a separate process; load = 1-minute "
             "load average before / after the step (2 = both cores busy).", ""]
    for size, entry in results["sizes"].items():
        fp32_gb = entry["checkpoint"]["fp32_bytes"] / 1024**3
        lines += [f"## {size}: {entry['checkpoint']['parameters'] / 1e6:,.0f} M parameters, "
                  f"{fp32_gb:.2f} GB in FP32", "",
                  "| step | exit | wall s | peak RSS GB | RSS / FP32 bytes | load | speed vs FP32 | drift % "
                  "| files MB | note |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [_row(row, fp32_gb) for row in entry["steps"]]
        lines += ["", "Commands:", ""]
        lines += [f"- {row['step']}: `{row['benchmark_command']}` ({row['when']})" for row in entry["steps"]]
        lines.append("")
    old = out.read_text().splitlines() if out.exists() else []
    notes = next((i for i, x in enumerate(old) if x.startswith("## ") and not SIZE_HEADING.match(x)), None)
    out.write_text("\n".join(lines + (old[notes:] if notes is not None else [])) + "\n")


def _row(row: dict, fp32_gb: float) -> str:
    rss = row["peak_rss_gb"]
    ratio = "-" if rss is None else f"{rss / fp32_gb:.2f}x"
    if row.get("above_imports_gb") is not None:
        ratio += f" ({row['above_imports_gb'] / fp32_gb:.2f}x above imports)"
    files = ", ".join(f"{k} {v}" for k, v in row["files_mb"].items()) or "-"
    return (f"| {row['step']} | {row['rc']} | {row['wall_s']} | {rss if rss is not None else '-'} | "
            f"{ratio} | {row['load_before'][0]:.1f} / {row['load_after'][0]:.1f} | "
            f"{row.get('speedup_vs_fp32', '-')} | {row.get('drift_mean_pct', '-')} | {files} | "
            f"{row['error'] or ''} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", choices=sorted(SIZES), required=True)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--work", type=Path, default=Path("runs/scale"))
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per step before it is stopped")
    parser.add_argument("--dtype", default=None, help="passed to export/compress as --dtype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                        help="compress steps: where the torch side runs (default: vlaedge's, auto)")
    parser.add_argument("--calib-frames", type=int, default=None,
                        help="compress steps: quantize.num_calib_frames instead of the recipe's (256)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="compress steps: a recipe override, e.g. quantize.stages.prefix=fp32")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scale.md")
    args = parser.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    saved = args.out.with_suffix(".json")
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    results = {"machine": machine(), "sizes": previous.get("sizes", {})}
    for size in args.size:
        checkpoint = args.work / size / "checkpoint"
        info_file = checkpoint / "scale.json"
        if not info_file.is_file():
            print(f"{size}: writing the checkpoint to {checkpoint}", flush=True)
            shutil.rmtree(checkpoint, ignore_errors=True)
            info = build_checkpoint(size, checkpoint, args.seed)
            info_file.write_text(json.dumps(info))
        info = json.loads(info_file.read_text())
        command = " ".join(["python benchmarks/scale.py", f"--size {size}", f"--steps {','.join(steps)}"]
                           + ([f"--dtype {args.dtype}"] if args.dtype else [])
                           + ([f"--calib-frames {args.calib_frames}"] if args.calib_frames else [])
                           + ([f"--device {args.device}"] if args.device else [])
                           + [f"--set {kv}" for kv in args.settings])
        entry = results["sizes"].setdefault(size, {"steps": []})
        entry["checkpoint"] = info
        for step in steps:
            print(f"{size}: {step} ...", flush=True)
            row = run_step(step, checkpoint, args.work / size, args.timeout, args.dtype, args.calib_frames,
                           tuple(args.settings), args.device)
            row["benchmark_command"] = command
            row["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(f"{size}: {step}: exit {row['rc']}, {row['wall_s']} s, peak RSS {row['peak_rss_gb']} GB "
                  f"{row.get('error') or ''}", flush=True)
            kept = [r for r in entry["steps"] if r["step"] != step]  # a step's new row replaces its old one
            entry["steps"] = sorted(kept + [row], key=lambda r: STEPS.index(r["step"]))
            write_results(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

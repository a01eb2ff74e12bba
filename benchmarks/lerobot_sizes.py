"""LeRobot checkpoints at their published sizes through vlaedge: params, load, compress, drift and speed.

Each type is a LeRobot `pretrained_model/` folder (the layout LeRobot 0.4 saves; written by
`vlaedge.models.lerobot.synthetic`) with the published model's config and seeded random weights (no hub;
random weights are enough for memory and time, never for accuracy), and a LeRobot v3 dataset of random
frames with the checkpoint's features:

- `act`: LeRobot's ACTConfig defaults as in `lerobot/act_aloha_sim_transfer_cube_human` (one 480x640
  camera, 14-dim ALOHA state and action, dim 512, 4 encoder / 1 decoder layers, feed-forward 3200, chunk
  100), ~52 M parameters.
- `diffusion`: `lerobot/diffusion_pusht` (96x96 camera cropped to 84, 2-step history, U-Net down dims
  512/1024/2048, horizon 16, 8 executed actions, DDPM with 100 steps), ~263 M.
- `pi0`: `lerobot/pi0_base`'s network (PaliGemma 3B: SigLIP So400m/14 at 224 px + Gemma 2B, Gemma 300M
  action expert, chunk 50, 10 Euler steps), two 224x224 cameras, 14-dim state and action, ~3.3 B (4.0 B
  tensors stored, 16.1 GB, streamed into one model.safetensors as LeRobot saves it); its tokenizer is
  the pi0 fixture's stand-in.
- `act-fixture`, `diffusion-fixture`, `smolvla-fixture`: the small checkpoints LeRobot
  0.4.4 itself wrote (the fidelity fixtures of tests/test_lerobot_policy.py), used in place.
- `smolvla`: `lerobot/smolvla_base`'s network (SmolVLM2-500M's widths, its first 16 layers, expert at 0.75
  width, chunk 50, 10 Euler steps, images padded to 512), two 480x640 cameras, 6-dim SO-100 state and
  action, ~450 M; the backbone folder holds SmolVLM2-500M's config and, as the tokenizer, the SmolVLA
  fixture's (token ids only need to be in the vocabulary).

Every step runs as its own process under `/usr/bin/time -v` (wall time and peak RSS): `load`
(`vlaedge.models.load_policy`) and `vlaedge compress --recipe cpu-int8` (verify and profile included; the
closed loop is off: random weights have no success to lose; drift on 64 evaluation frames); the INT8 / FP32
speed ratio (median, interleaved, 2 threads) and drift come from the run's report.json. A step over
`--timeout` is stopped and reported as such.

Usage (from the repository root; heavy: minutes to an hour per type, run on a quiet machine):

    .venv/bin/python benchmarks/lerobot_sizes.py --type act --type diffusion --work runs/lerobot-sizes

Writes `benchmarks/results/lerobot-sizes.md` and `.json`; a type's rows replace its previous rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import scale  # noqa: E402  (the machine description and /usr/bin/time parsing shared with scale.py)

CASES = ROOT.parent / "shared" / "cases" / "lerobot_policies"
IMAGE_STATS = {"mean": np.full((3, 1, 1), 0.5), "std": np.full((3, 1, 1), 0.25),
               "min": np.zeros((3, 1, 1)), "max": np.ones((3, 1, 1))}


def _vector_stats(dim: int) -> dict:
    return {"mean": np.zeros(dim), "std": np.ones(dim), "min": np.full(dim, -3.0), "max": np.full(dim, 3.0)}


def _features(cameras: dict[str, tuple[int, int]], state: int, action: int) -> tuple[dict, dict]:
    inputs = {name: {"type": "VISUAL", "shape": [3, h, w]} for name, (h, w) in cameras.items()}
    inputs["observation.state"] = {"type": "STATE", "shape": [state]}
    return inputs, {"action": {"type": "ACTION", "shape": [action]}}


def act_config() -> dict:
    inputs, outputs = _features({"observation.images.top": (480, 640)}, 14, 14)
    return {"type": "act", "n_obs_steps": 1, "input_features": inputs, "output_features": outputs,
            "chunk_size": 100, "n_action_steps": 100,
            "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
            "vision_backbone": "resnet18", "replace_final_stride_with_dilation": False, "pre_norm": False,
            "dim_model": 512, "n_heads": 8, "dim_feedforward": 3200, "feedforward_activation": "relu",
            "n_encoder_layers": 4, "n_decoder_layers": 1, "use_vae": True, "latent_dim": 32,
            "n_vae_encoder_layers": 4, "temporal_ensemble_coeff": None}


def diffusion_config() -> dict:
    inputs, outputs = _features({"observation.image": (96, 96)}, 2, 2)
    return {"type": "diffusion", "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8,
            "input_features": inputs, "output_features": outputs,
            "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
            "vision_backbone": "resnet18", "crop_shape": [84, 84], "use_group_norm": True,
            "spatial_softmax_num_keypoints": 32, "use_separate_rgb_encoder_per_camera": False,
            "down_dims": [512, 1024, 2048], "kernel_size": 5, "n_groups": 8, "diffusion_step_embed_dim": 128,
            "use_film_scale_modulation": True, "noise_scheduler_type": "DDPM", "num_train_timesteps": 100,
            "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02,
            "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
            "num_inference_steps": None}


SMOLVLM2_500M = {  # SmolVLM2-500M-Video-Instruct's config.json (the widths SmolVLA uses)
    "architectures": ["SmolVLMForConditionalGeneration"], "model_type": "smolvlm", "image_token_id": 49190,
    "scale_factor": 4, "pad_token_id": 2, "tie_word_embeddings": False,
    "text_config": {"model_type": "llama", "hidden_size": 960, "intermediate_size": 2560,
                    "num_hidden_layers": 32, "num_attention_heads": 15, "num_key_value_heads": 5,
                    "head_dim": 64, "vocab_size": 49280, "rope_theta": 100000.0, "rms_norm_eps": 1e-05,
                    "max_position_embeddings": 8192, "hidden_act": "silu", "attention_bias": False,
                    "mlp_bias": False, "pad_token_id": 2},
    "vision_config": {"model_type": "smolvlm_vision", "hidden_size": 768, "intermediate_size": 3072,
                      "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 16, "image_size": 512,
                      "num_channels": 3, "layer_norm_eps": 1e-06, "hidden_act": "gelu_pytorch_tanh"}}


def smolvla_config() -> dict:
    cameras = {"observation.images.top": (480, 640), "observation.images.wrist": (480, 640)}
    inputs, outputs = _features(cameras, 6, 6)
    base = json.loads((CASES / "smolvla_tiny" / "pretrained_model" / "config.json").read_text())
    return {**base, "input_features": inputs, "output_features": outputs, "chunk_size": 50,
            "n_action_steps": 50, "resize_imgs_with_padding": [512, 512], "num_vlm_layers": 16,
            "vlm_model_name": "../vlm", "load_vlm_weights": False, "tokenizer_max_length": 48}


def pi0_config() -> dict:
    cameras = {"observation.images.base": (224, 224), "observation.images.wrist": (224, 224)}
    inputs, outputs = _features(cameras, 14, 14)
    return {"type": "pi0", "n_obs_steps": 1, "input_features": inputs, "output_features": outputs,
            "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m", "dtype": "float32",
            "chunk_size": 50, "n_action_steps": 50, "max_state_dim": 32, "max_action_dim": 32,
            "num_inference_steps": 10, "min_period": 0.004, "max_period": 4.0, "image_resolution": [224, 224],
            "empty_cameras": 0, "tokenizer_max_length": 48,
            "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}}


TYPES = {"act": act_config, "diffusion": diffusion_config, "smolvla": smolvla_config, "pi0": pi0_config}
# The checkpoints LeRobot 0.4.4 itself wrote at small sizes (tests/test_lerobot_policy.py's fidelity
# fixtures), run in place (a link, never copied or written to) with a random dataset of their features.
FIXTURES = {"act-fixture": CASES / "act_aloha14", "smolvla-fixture": CASES / "smolvla_tiny",
            "diffusion-fixture": ROOT / "tests/fixtures/lerobot_diffusion/ddim_pusht"}
# (the pi0 fixture is not among them: its widths are LeRobot's tiny_sizes patch, which only its tests apply,
# so its folder builds at pi0's published widths from the command line; tests/test_lerobot_compress.py
# compresses it per stage)


def build(kind: str, work: Path, seed: int = 0) -> dict:
    """The checkpoint (work/pretrained_model, streamed: about one tensor in memory at a time), the backbone
    folder (smolvla) and the dataset (work/data); returns {"parameters", "fp32_bytes"}."""
    from vlaedge.models.lerobot.synthetic import write_pretrained

    config = TYPES[kind]()
    text = None
    if kind == "smolvla":
        vlm = work / "vlm"
        vlm.mkdir(parents=True, exist_ok=True)
        (vlm / "config.json").write_text(json.dumps(SMOLVLM2_500M, indent=1))
        shutil.copy(CASES / "smolvla_tiny" / "tiny_smolvlm2" / "tokenizer.json", vlm / "tokenizer.json")
        text = {"tokenizer_name": "../vlm", "max_length": 48}
    if kind == "pi0":  # PaliGemma's tokenizer is on the Hub: the pi0 fixture's stand-in
        shutil.copytree(ROOT / "tests/fixtures/lerobot_pi0/paligemma_tokenizer", work / "tokenizer",
                        dirs_exist_ok=True)
        text = {"tokenizer_name": "../tokenizer", "max_length": 48}
    stats = {n: IMAGE_STATS if f["type"] == "VISUAL" else _vector_stats(f["shape"][0])
             for n, f in {**config["input_features"], **config["output_features"]}.items()}
    folder = write_pretrained(work / "pretrained_model", config, stats, seed, text, stream=True)
    _dataset(config, work / "data", seed)
    params = sum(int(np.prod(shape)) for shape in _shapes(folder))
    return {"parameters": params, "fp32_bytes": 4 * params}


def link_fixture(kind: str, work: Path, seed: int = 0) -> dict:
    """work/pretrained_model -> the fixture's folder (its backbone folders resolve beside the original),
    and a dataset of its features (work/data); returns {"parameters", "fp32_bytes"}. The Diffusion
    fixture's weights are seeded, not stored: its seeded_weights.py writes them first."""
    folder = FIXTURES[kind] / "pretrained_model"
    if not (folder / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(FIXTURES[kind].parent / "seeded_weights.py")], check=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "pretrained_model").unlink(missing_ok=True)
    (work / "pretrained_model").symlink_to(folder.resolve(), target_is_directory=True)
    _dataset(json.loads((folder / "config.json").read_text()), work / "data", seed)
    params = sum(int(np.prod(shape)) for shape in _shapes(folder))
    return {"parameters": params, "fp32_bytes": 4 * params}


def _shapes(folder: Path) -> list[tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        return [tuple(f.get_slice(k).get_shape()) for k in f.keys()]  # noqa: SIM118 (a safe_open handle)


def _dataset(config: dict, out: Path, seed: int, episodes: int = 4, frames: int = 40) -> None:
    """Random frames with the checkpoint's features, as a LeRobot v3 dataset (PNG cameras in parquet)."""
    from vlaedge.data import Episode, EpisodeDataset, save_lerobot

    rng = np.random.default_rng(seed)
    cameras = {n: f["shape"] for n, f in config["input_features"].items() if f["type"] == "VISUAL"}
    state = config["input_features"]["observation.state"]["shape"][0]
    action = config["output_features"]["action"]["shape"][0]
    eps = []
    for e in range(episodes):
        views = {n: rng.integers(0, 256, (frames, s[1], s[2], 3), dtype=np.uint8) for n, s in cameras.items()}
        states = rng.normal(0, 1, (frames, state)).astype(np.float32)
        actions = rng.normal(0, 1, (frames, action)).astype(np.float32)
        eps.append(Episode("pick up the red cube", next(iter(views.values())), states, actions, index=e,
                           cameras=views))
    dataset = EpisodeDataset.from_episodes(eps, fps=10, action_names=[f"a{i}" for i in range(action)])
    shutil.rmtree(out, ignore_errors=True)
    save_lerobot(dataset, out, image_key=next(iter(cameras)))


COMPRESS = ("--set", "verify.closed_loop_episodes=0", "--set", "budgets.max_success_drop=null",
            "--set", "verify.trace_episodes=0", "--set", "verify.eval_frames=64",
            "--set", "quantize.num_calib_frames=64", "--set", "export.check_frames=32")


def run(step: str, work: Path, timeout: int, settings: tuple[str, ...] = ()) -> dict:
    """One step in its own process under /usr/bin/time -v; `settings` (KEY=VALUE) go to compress as `--set`
    after `COMPRESS` (e.g. fewer evaluation frames for a 100-step sampler, a stage kept in FP32)."""
    checkpoint, out = work / "pretrained_model", work / step
    shutil.rmtree(out, ignore_errors=True)
    if step == "load":
        code = "import sys; from vlaedge.models import load_policy; load_policy(sys.argv[1])"
        cmd = [sys.executable, "-c", code, str(checkpoint)]
    else:
        cmd = [str(scale.VENV_BIN / "vlaedge"), "compress", str(checkpoint), "--data", str(work / "data"),
               "--recipe", step, "--out", str(out), *COMPRESS, *(a for kv in settings for a in ("--set", kv))]
    before, start = scale.os.getloadavg(), time.monotonic()
    try:
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = "timeout", b"".join(x or b"" for x in (e.stdout, e.stderr)).decode(errors="replace")
    row = {"step": step, "rc": rc, "wall_s": round(time.monotonic() - start, 1), "load_before": before,
           "load_after": scale.os.getloadavg(), "peak_rss_gb": scale._peak_rss_gb(log),
           "files_mb": scale._files_mb(out), "error": scale._error_line(log) if rc not in (0, 1) else None}
    if settings and step != "load":
        row["settings"] = list(settings)
    row.update(scale._report_figures(out))
    (work / f"{step}.log").write_text(log)
    return row


HEADER = ("| type | params | FP32 GB | step | exit | wall s | peak RSS GB (x FP32) | load "
          "| INT8 vs FP32 (median) | drift mean % | files MB | note |")


def write(results: dict, out: Path) -> None:
    """`out` (.md) and its .json."""
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    m = results["machine"]
    flags = f"AVX2 {'yes' if m['avx2'] else 'no'}, AVX512-VNNI {'yes' if m['avx512_vnni'] else 'no'}"
    lines = ["# LeRobot checkpoints at their published sizes", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {flags}. Seeded random weights "
             "(memory and time only). Wall time and peak RSS per step from `/usr/bin/time -v`; load = "
             "1-minute load average before / after (2 = both cores busy). Command: "
             "`python benchmarks/lerobot_sizes.py --type TYPE`.", "", HEADER,
             "|" + "|".join([" --- "] * (HEADER.count("|") - 1)) + "|"]
    for kind, entry in results["types"].items():
        lines += [_row(kind, entry, row) for row in entry["steps"]]
    out.write_text("\n".join(lines) + "\n")


def _row(kind: str, entry: dict, row: dict) -> str:
    gb = entry["fp32_bytes"] / 1024**3
    rss = row["peak_rss_gb"]
    memory = f"{rss} ({rss / gb:.2f}x)" if rss is not None else "-"
    files = ", ".join(f"{k} {v}" for k, v in row["files_mb"].items()) or "-"
    overrides = " ".join(f"--set {kv}" for kv in row.get("settings", []))
    cells = [kind, f"{entry['parameters'] / 1e6:,.1f} M", f"{gb:.2f}", row["step"], row["rc"], row["wall_s"],
             memory, f"{row['load_before'][0]:.1f} / {row['load_after'][0]:.1f}",
             row.get("speedup_vs_fp32", "-"), _pct(row.get("drift_mean_pct")), files,
             "; ".join(filter(None, [row["error"], overrides]))]
    return "| " + " | ".join(str(c) for c in cells) + " |"


STEPS = ("load", "cpu-int8", "orin-int8")  # load_policy, then `vlaedge compress --recipe STEP`


def _pct(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--type", action="append", choices=sorted(TYPES) + sorted(FIXTURES), required=True,
                        help="a published size (random weights) or a LeRobot-written fixture (*-fixture)")
    parser.add_argument("--steps", default="load,cpu-int8",
                        help=f"comma-separated, of {', '.join(STEPS)} (a recipe name: a compress with it)")
    parser.add_argument("--work", type=Path, default=Path("runs/lerobot-sizes"),
                        help="where the checkpoints, datasets and runs are written (tens of GB for pi0)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per step before it is stopped")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="compress steps: a recipe override, e.g. verify.eval_frames=8")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lerobot-sizes.md",
                        help="results (.md, .json); a rerun step replaces its row there, the rest stay")
    args = parser.parse_args()
    unknown = sorted(set(args.steps.split(",")) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    saved = args.out.with_suffix(".json")
    results = {"machine": scale.machine(),
               "types": json.loads(saved.read_text())["types"] if saved.exists() else {}}
    for kind in args.type:
        work = args.work / kind
        info_file = work / "sizes.json"
        if not info_file.is_file():
            print(f"{kind}: writing the checkpoint and dataset to {work}", flush=True)
            info_file.parent.mkdir(parents=True, exist_ok=True)
            sizes = link_fixture(kind, work) if kind in FIXTURES else build(kind, work)
            info_file.write_text(json.dumps(sizes))
        kept = [r for r in results["types"].get(kind, {}).get("steps", [])
                if r["step"] not in args.steps.split(",")]
        entry = {**json.loads(info_file.read_text()), "steps": kept}  # a step run again replaces its row
        for step in args.steps.split(","):
            print(f"{kind}: {step} ...", flush=True)
            entry["steps"].append(run(step, work, args.timeout, tuple(args.settings)))
            print(f"{kind}: {step}: {entry['steps'][-1]}", flush=True)
            results["types"][kind] = entry
            write(results, args.out)


if __name__ == "__main__":
    main()

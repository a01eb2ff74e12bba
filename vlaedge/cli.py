"""The `vlaedge` command line. Each command is a thin adapter over one library verb; errors are mapped
to exit codes in one place (`main`): 0 ok, 1 a budget violated, 2 could not run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vlaedge.errors import GateFailed, VlaedgeError

app = typer.Typer(
    name="vlaedge",
    help="Compress, export, profile and gate Vision-Language-Action policies for NVIDIA Jetson.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

CheckpointArg = Annotated[Path | None, typer.Argument(
    help="Checkpoint directory (config.json + model.safetensors). Default: the embedded default policy.")]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", help="Accept .pt/.pth weights. Unpickling runs code: only for files you trust.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]


def _echo(text: str) -> None:
    typer.echo(text)


@app.command()
def info() -> None:
    """Versions of vlaedge's dependencies, GPU presence and CPU features."""
    from vlaedge.info import collect_info

    for key, value in collect_info().items():
        _echo(f"{key:<14} {value}")


@app.command()
def record(
    out: Annotated[Path, typer.Argument(help="Output dataset directory (LeRobot v3) or folder of .npz.")],
    episodes: Annotated[int, typer.Option(help="Episodes to record.")] = 50,
    seed: Seed = 0,
    image_size: Annotated[int, typer.Option(help="Camera image side in pixels.")] = 64,
    fmt: Annotated[str, typer.Option("--format", help="lerobot or npz.")] = "lerobot",
    force: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Record scripted-expert episodes of the built-in tabletop task as a dataset."""
    from vlaedge.record import record_dataset

    path, ds = record_dataset(out, episodes, seed, image_size, fmt, force)
    ok = sum(bool(e.success) for e in ds.episodes)
    _echo(f"recorded {len(ds.episodes)} episodes ({ds.num_frames} frames, {ok} successful) to {path}")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint directory.")],
    size: Annotated[str, typer.Option(help="nano, small or base.")] = "nano",
    head: Annotated[str, typer.Option(help="tokens, chunk or flow.")] = "chunk",
    episodes: Annotated[int, typer.Option(help="Expert demonstrations to record.")] = 400,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 3000,
    seed: Seed = 0,
    ignore_instruction: Annotated[bool, typer.Option(help="Ablation: a constant instruction.")] = False,
    eval_episodes: Annotated[int, typer.Option(help="Held-out closed-loop episodes after training.")] = 100,
) -> None:
    """Train a reference VLA on the tabletop task (this is how the default policy was made)."""
    from vlaedge.train import TrainConfig, train_policy
    from vlaedge.verify import closed_loop

    cfg = TrainConfig(size=size, head=head, episodes=episodes, steps=steps, seed=seed,
                      ignore_instruction=ignore_instruction)
    policy, stats = train_policy(cfg)
    policy.save(out)
    _echo(f"trained {size}/{head} on {stats['frames']} frames in {stats['seconds']:.0f} s "
          f"(final loss {stats['final_loss']:.4f}); saved {out}")
    if eval_episodes:
        act = _ablated(policy) if ignore_instruction else policy.act
        _echo(f"closed-loop success on {eval_episodes} held-out episodes: {closed_loop(act, eval_episodes)}")


def _ablated(policy):
    return lambda frames: policy.act({**frames, "instruction": [""] * len(frames["instruction"])})


@app.command()
def rollout(
    checkpoint: CheckpointArg = None,
    episodes: Annotated[int, typer.Option(help="Closed-loop episodes.")] = 100,
    seed: Annotated[int, typer.Option(help="First episode seed (held-out seeds start at 10000).")] = 10_000,
    allow_pickle: AllowPickle = False,
) -> None:
    """Closed-loop success of a policy on the built-in tabletop task."""
    from vlaedge.defaults import default_checkpoint
    from vlaedge.models import load_policy
    from vlaedge.verify import closed_loop

    path = checkpoint or default_checkpoint()
    policy = load_policy(path, allow_pickle)
    result = closed_loop(policy.act, episodes, seed)
    _echo(f"{policy.name} ({path}): closed-loop success {result}")


RecipeOpt = Annotated[Path, typer.Option("--recipe", "-r", help="Recipe YAML (see recipes/).")]
DataOpt = Annotated[Path | None, typer.Option(
    "--data", "-d", help="Episodes: LeRobot v3 dataset root or .npz folder. Default: calibration/tabletop.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory (written atomically).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a recipe field, e.g. --set quantize.num_calib_frames=64 (repeatable).")]


def _recipe(path: Path, overrides: list[str] | None):
    from vlaedge.recipe import load_recipe

    return load_recipe(path, overrides or [])


def _only_stage(path: Path, overrides: list[str] | None, stage: str, example: str):
    """The recipe with every stage but `stage` (and the export it needs) removed."""
    r = _recipe(path, overrides)
    if getattr(r, stage) is None:
        raise VlaedgeError(f"recipe: {path} has no {stage} section", f"add one, e.g. from {example}")
    others = {"prune", "quantize", "engine", "verify", "budgets"} - {stage}
    return r.model_copy(update=dict.fromkeys(others))


@app.command()
def compress(
    checkpoint: CheckpointArg = None,
    recipe: RecipeOpt = Path("recipes/cpu-int8.yaml"),
    data: DataOpt = None,
    out: OutOpt = Path("runs/compressed"),
    force: ForceOpt = False,
    overrides: SetOpt = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Prune, quantize and export a policy as the recipe says, into one output directory."""
    from vlaedge.compress import compress as run

    result = run(_recipe(recipe, overrides), out, checkpoint, data, force, allow_pickle, log=_echo)
    _echo(f"wrote {result.out} (manifest.json lists every file with its sha256)")


@app.command()
def prune(
    checkpoint: CheckpointArg = None,
    recipe: RecipeOpt = Path("recipes/cpu-pruned-int8.yaml"),
    data: DataOpt = None,
    out: OutOpt = Path("runs/pruned"),
    force: ForceOpt = False,
    overrides: SetOpt = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Only the prune stage: writes the pruned checkpoint (and its manifest) to --out."""
    from vlaedge.compress import compress as run

    r = _only_stage(recipe, overrides, "prune", "recipes/cpu-pruned-int8.yaml")
    result = run(r, out, checkpoint, data, force, allow_pickle, log=_echo)
    _echo(f"wrote {result.out}/pruned (load it like any checkpoint)")


@app.command()
def quantize(
    checkpoint: CheckpointArg = None,
    recipe: RecipeOpt = Path("recipes/cpu-int8.yaml"),
    data: DataOpt = None,
    out: OutOpt = Path("runs/quantized"),
    force: ForceOpt = False,
    overrides: SetOpt = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Only quantize (and the export it needs): writes the quantized ONNX to --out/model.onnx."""
    from vlaedge.compress import compress as run

    r = _only_stage(recipe, overrides, "quantize", "recipes/cpu-int8.yaml")
    result = run(r, out, checkpoint, data, force, allow_pickle, log=_echo)
    _echo(f"wrote {result.out}/model.onnx")


@app.command()
def export(
    checkpoint: CheckpointArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")] = Path("model.onnx"),
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    force: ForceOpt = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Only export: the FP32 policy to ONNX, checked against torch in ONNX Runtime."""
    from vlaedge.defaults import default_checkpoint
    from vlaedge.export import export_onnx
    from vlaedge.models import load_policy
    from vlaedge.recipe import ExportConfig

    if out.exists() and not force:
        raise VlaedgeError(f"output: {out} already exists", "pass --force to replace it")
    policy = load_policy(checkpoint or default_checkpoint(), allow_pickle)
    result = export_onnx(policy, out, ExportConfig(opset=opset), policy.example_inputs(batch=8))
    _echo(result.summary())


@app.command()
def targets() -> None:
    """List the deployment targets and what they can run."""
    from rich.console import Console
    from rich.table import Table

    from vlaedge.targets import format_targets

    rows = format_targets()
    table = Table(*rows[0].keys())
    for row in rows:
        table.add_row(*row.values())
    Console().print(table)


def main() -> None:
    """Console entry point: runs the app and maps errors to exit codes."""
    try:
        app()  # usage errors exit 2 inside; success exits 0
    except VlaedgeError as e:
        typer.secho(f"error: {e.message}", err=True, fg="red")
        if e.hint:
            typer.echo(f"  fix: {e.hint}", err=True)
        sys.exit(e.exit_code)
    except GateFailed as e:
        typer.secho(f"gate failed: {e}", err=True, fg="red")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The `vlaedge` command line. Each command is a thin adapter over one library verb; errors are mapped
to exit codes in one place (`main`, through `vlaedge.errors.describe`): 0 ok, 1 a budget violated or a
check inconclusive, 2 could not run (Ctrl-C included: one "interrupted:" line, exit 2). No traceback
reaches the user without `--debug`."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from vlaedge import progress
from vlaedge.defaults import MAX_THREADS
from vlaedge.errors import GateFailed, VlaedgeError, describe


class _Group(TyperGroup):
    """The app's command group: a flag (an option that takes no value) shows no type in --help, where typer
    prints `<bool>` as if it took one; for the group's own options and every command's."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _bare_flags(command, ctx)
        return command

    def format_help(self, ctx, formatter) -> None:
        _bare_flags(self, ctx)
        super().format_help(ctx, formatter)


def _bare_flags(command, ctx) -> None:
    for param in command.get_params(ctx):  # --help included
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # shown as the type column: empty


app = typer.Typer(
    cls=_Group,
    name="vlaedge",
    help="Compress, export, profile and gate Vision-Language-Action policies for NVIDIA Jetson.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # `main` maps every exception to one line; --debug shows tracebacks
    add_completion=False,
)
_debug = False  # set by --debug (or VLAEDGE_DEBUG=1): print the traceback of an unexpected error

CheckpointArg = Annotated[Path | None, typer.Argument(
    help="Checkpoint directory (config.json + model.safetensors). Default: the embedded default policy.")]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", help="Accept .pt/.pth weights. Unpickling runs code: only for files you trust.")]
TrustCode = Annotated[bool, typer.Option(
    "--trust-code", help="Let a 'python' checkpoint import and call the factory its config.json names "
    "(that runs the checkpoint's code): only for checkpoints you trust.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress bars and no progress lines; results and errors only.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object (verdict, key figures, paths) on stdout; all else goes to stderr.")]


def _echo(text: str) -> None:
    typer.echo(text)


def _log(text: str) -> None:
    """A progress line of a long command: dropped with --quiet."""
    if not progress.quiet:
        typer.echo(text)


def _quiet(quiet: bool) -> None:
    progress.quiet = progress.quiet or quiet


@contextlib.contextmanager
def _stdout_to_stderr(json_mode: bool):
    """With --json, whatever the command prints (ours or a library's) goes to stderr, so stdout holds only
    the JSON object printed after the block."""
    if not json_mode:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show the traceback of an unexpected error (also: VLAEDGE_DEBUG=1).")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Compress, export, profile and gate Vision-Language-Action policies for NVIDIA Jetson."""
    global _debug
    _debug = _debug or debug
    progress.quiet = quiet or os.environ.get("VLAEDGE_QUIET", "") not in ("", "0")


@app.command()
def info() -> None:
    """Versions of vlaedge's dependencies, GPU presence and CPU features."""
    from vlaedge.info import collect_info

    for key, value in collect_info().items():
        _echo(f"{key:<14} {value}")


@app.command()
def data(
    dataset: Annotated[Path, typer.Argument(help="LeRobot v3 dataset root, .npz folder or .npz file.")],
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="Also check the dataset against this policy's inputs and actions.",
    )] = None,
    mapping: Annotated[list[str] | None, typer.Option(
        "--map", help="INPUT=FEATURE, as the recipe's data.map (repeatable).")] = None,
    allow_pickle: AllowPickle = False,
    trust_code: TrustCode = False,
) -> None:
    """Episodes, frames, fps, features, cameras, tasks and stats of a dataset (and its fit to a policy)."""
    from vlaedge.data import load_dataset
    from vlaedge.data.summary import summarize

    ds = load_dataset(dataset)
    _echo(summarize(ds))
    if checkpoint is not None:
        from vlaedge.models import load_policy
        from vlaedge.models.preprocess import bind_data

        pairs = [m.partition("=") for m in mapping or []]
        if any(not sep or not k or not v for k, sep, v in pairs):
            raise VlaedgeError(f"--map: {mapping} must be INPUT=FEATURE",
                               "e.g. --map rgb=observation.images.cam_high")
        policy = load_policy(checkpoint, allow_pickle, trust_code)
        binding = bind_data(policy, ds, {k: v for k, _, v in pairs})
        _echo(f"policy {checkpoint}: every input fits")
        for line in binding.lines():
            _echo(line)


@app.command()
def record(
    out: Annotated[Path, typer.Argument(help="Output dataset directory (LeRobot v3) or folder of .npz.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to record.")] = 50,
    seed: Seed = 0,
    image_size: Annotated[int, typer.Option(min=8, help="Camera image side in pixels.")] = 64,
    fmt: Annotated[str, typer.Option("--format", help="lerobot or npz.")] = "lerobot",
    force: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Record scripted-expert episodes of the built-in tabletop task as a dataset."""
    from vlaedge.sim.record import record_dataset

    path, ds = record_dataset(out, episodes, seed, image_size, fmt, force)
    ok = sum(bool(e.success) for e in ds.episodes)
    _echo(f"recorded {len(ds.episodes)} episodes ({ds.num_frames} frames, {ok} successful) to {path}")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint directory.")],
    size: Annotated[str, typer.Option(help="nano, small or base.")] = "nano",
    head: Annotated[str, typer.Option(help="tokens, chunk or flow.")] = "chunk",
    episodes: Annotated[int, typer.Option(min=1, help="Expert demonstrations to record.")] = 1000,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 3000,
    image_size: Annotated[
        int, typer.Option(help="Policy input side (64 px camera frames are resized).")] = 32,
    seed: Seed = 0,
    threads: Annotated[int, typer.Option(
        min=0, max=MAX_THREADS, help="torch CPU threads (0 = all cores).")] = 0,
    ignore_instruction: Annotated[bool, typer.Option(help="Ablation: a constant instruction.")] = False,
    dagger_rounds: Annotated[int, typer.Option(min=0,
        help="Rounds of on-policy episodes relabelled by the expert (DAgger); 0 = behaviour cloning only."
    )] = 4,
    dagger_episodes: Annotated[int, typer.Option(min=1, help="Closed-loop episodes per DAgger round.")] = 250,
    eval_episodes: Annotated[int, typer.Option(
        min=0, help="Held-out closed-loop episodes after training.")] = 100,
) -> None:
    """Train a reference VLA on the tabletop task (this is how the default policy was made)."""
    from vlaedge.check.verify import closed_loop
    from vlaedge.sim.train import TrainConfig, constant_instruction, train_policy

    cfg = TrainConfig(size=size, head=head, episodes=episodes, steps=steps, image_size=image_size, seed=seed,
                      threads=threads, ignore_instruction=ignore_instruction, dagger_rounds=dagger_rounds,
                      dagger_episodes=dagger_episodes)
    policy, stats = train_policy(cfg)
    policy.save(out)
    _echo(f"trained {size}/{head} on {stats['frames']} frames in {stats['seconds']:.0f} s "
          f"(final loss {stats['final_loss']:.4f}); saved {out}")
    if eval_episodes:
        act = constant_instruction(policy.act) if ignore_instruction else policy.act
        _echo(f"closed-loop success on {eval_episodes} held-out episodes: {closed_loop(act, eval_episodes)}")


@app.command()
def rollout(
    checkpoint: CheckpointArg = None,
    episodes: Annotated[int, typer.Option(min=1, help="Closed-loop episodes.")] = 100,
    seed: Annotated[int, typer.Option(
        min=0, help="First episode seed (held-out seeds start at 10000).")] = 10_000,
    allow_pickle: AllowPickle = False,
    trust_code: TrustCode = False,
) -> None:
    """Closed-loop success of a policy on the built-in tabletop task."""
    from vlaedge.check.verify import closed_loop
    from vlaedge.defaults import default_checkpoint
    from vlaedge.models import load_policy

    path = checkpoint or default_checkpoint()
    policy = load_policy(path, allow_pickle, trust_code)
    result = closed_loop(policy.act, episodes, seed)
    _echo(f"{policy.name} ({path}): closed-loop success {result}")


RecipeOpt = Annotated[str, typer.Option(
    "--recipe", "-r", help="A recipe YAML file, or a shipped recipe by name (see 'vlaedge recipes').")]
DataOpt = Annotated[Path | None, typer.Option(
    "--data", "-d", help="Episodes: LeRobot v3 dataset root or .npz folder. Default: calibration/tabletop.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory (written atomically).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a recipe field, e.g. --set quantize.num_calib_frames=64 (repeatable).")]

DtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", help="Load the weights as float32 (default), float16, bfloat16 or auto (as stored): half "
    "precision halves their memory; stages that need FP32 cast there and say so (recipe: load.dtype).")]


DeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="Where the torch side runs (reference actions, calibration, pruning): auto (cuda where "
    "torch.cuda.is_available(), else cpu; the default), cpu or cuda. The ONNX export traces on the CPU and "
    "ONNX Runtime runs there (recipe: load.device).")]


def _with_dtype(overrides: list[str] | None, dtype: str | None, device: str | None = None) -> list[str]:
    """--dtype and --device as the recipe overrides they stand for (load.dtype, load.device)."""
    return [*(overrides or []), *([f"load.dtype={dtype}"] if dtype else []),
            *([f"load.device={device}"] if device else [])]


ExecutorOpt = Annotated[str | None, typer.Option(
    "--executor", help="Where tune's variants and the closed loop's episodes run: local (default, here) or "
    "ray (Ray tasks on a cluster; pip install 'vlaedge[ray]'). Latency is always timed on one node. "
    "(recipe: executor.kind)")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="ray: auto (the cluster this machine joined with 'ray start'), ray://HOST:PORT (Ray "
    "Client) or local (a Ray instance on this machine only). (recipe: executor.address)")]


def _with_executor(overrides: list[str] | None, executor: str | None, address: str | None) -> list[str]:
    """--executor and --address as the recipe overrides they stand for (executor.kind, executor.address);
    --address alone implies ray."""
    kind = executor or ("ray" if address else None)
    return [*(overrides or []), *([f"executor.kind={kind}"] if kind else []),
            *([f"executor.address={address}"] if address else [])]


@contextlib.contextmanager
def _executor(config):
    """The recipe's executor (None: local), current while inside (`vlaedge.executor.using`)."""
    from vlaedge.executor import open_from_config, using

    with open_from_config(config, _log) as executor, using(executor):
        yield executor


InventoryOpt = Annotated[Path | None, typer.Option(
    "--inventory", help="Run on every device of this inventory YAML (name, ssh, target per device) over SSH "
    "at once; one table per device (docs: guides/cluster.md).")]


def _fleet(command: str, inventory: Path, subject: Path, out: Path, budgets: Path | None, force: bool,
           **options) -> None:
    """The fleet form of `profile` / `device-check`: prints each device's table; exit 1 when a device is
    over its target's budgets."""
    from vlaedge.device_check import fleet

    result = fleet(command, inventory, subject, out, budgets, force, log=_log, **options)
    _echo(result.markdown())
    _echo(f"wrote {out}/fleet.json, fleet.md and one folder per device")
    if not result:
        raise GateFailed(result.failure_line())


def _recipe(path: str | Path, overrides: list[str] | None):
    from vlaedge.recipe import load_recipe

    return load_recipe(path, overrides or [])


def _only_stage(path: str | Path, overrides: list[str] | None, stage: str, example: str):
    """The recipe with every stage but `stage` (and the export it needs) removed."""
    r = _recipe(path, overrides)
    if getattr(r, stage) is None:
        raise VlaedgeError(f"recipe: {path} has no {stage} section",
                           f"add one, e.g. from the shipped recipe {example}")
    others = {"prune", "quantize", "engine", "verify", "budgets"} - {stage}
    return r.model_copy(update=dict.fromkeys(others))


@app.command()
def compress(
    checkpoint: CheckpointArg = None,
    recipe: RecipeOpt = "cpu-int8",
    data: DataOpt = None,
    out: OutOpt = Path("runs/compressed"),
    force: ForceOpt = False,
    overrides: SetOpt = None,
    allow_pickle: AllowPickle = False,
    trust_code: TrustCode = False,
    quiet: QuietOpt = False,
    json_mode: JsonOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    executor: ExecutorOpt = None,
    address: AddressOpt = None,
) -> None:
    """Prune, quantize and export a policy as the recipe says, into one output directory."""
    from vlaedge.pipeline import compress as run

    _quiet(quiet)
    with _stdout_to_stderr(json_mode):
        r = _recipe(recipe, _with_executor(_with_dtype(overrides, dtype, device), executor, address))
        with _executor(r.executor):
            result = run(r, out, checkpoint, data, force, allow_pickle, log=_log, trust_code=trust_code)
        _echo(f"wrote {result.out} (manifest.json lists every file with its sha256)")
        if result.gate is not None:
            _echo(result.gate.summary())
    if json_mode:
        from vlaedge.check.report import load_report
        from vlaedge.commands import json_summary

        report = load_report(result.out) if (result.out / "report.json").is_file() else None
        _echo(json_summary("compress", report, result.gate, result.out))
    if result.gate is not None and not result.gate:
        raise GateFailed(result.gate.failure_line())


@app.command()
def tune(
    checkpoint: CheckpointArg = None,
    recipe: RecipeOpt = "cpu-int8",
    data: DataOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Output directory (written atomically). An existing tune folder is resumed: variants whose inputs "
        "did not change are reused from its validated cache."
    ))] = Path("runs/tune"),
    max_minutes: Annotated[float, typer.Option(help="Time box for building variants, in minutes.")] = 5.0,
    space: Annotated[str, typer.Option(help="Variant space: full or quick (vlaedge.tune.space).")] = "full",
    overrides: SetOpt = None,
    trust_code: TrustCode = False,
    force: Annotated[bool, typer.Option("--force", help=(
        "Replace an existing output directory: start over without its cache."))] = False,
    quiet: QuietOpt = False,
    json_mode: JsonOpt = False,
    executor: ExecutorOpt = None,
    address: AddressOpt = None,
) -> None:
    """Measure quantization variants, pick the fastest within every budget, write a recipe reproducing it."""
    from vlaedge.recipe import recipe_path
    from vlaedge.tune import tune as run
    from vlaedge.tune.space import SPACES

    _quiet(quiet)
    with _stdout_to_stderr(json_mode):
        if space not in SPACES:
            raise VlaedgeError(f"tune: --space {space!r} is not a variant space",
                               f"use one of {', '.join(SPACES)}")
        r = _recipe(recipe, _with_executor(overrides, executor, address))
        with _executor(r.executor) as ex:
            result = run(r, out, checkpoint, data, max_minutes, space, recipe_name=str(recipe), log=_log,
                         trust_code=trust_code, force=force, executor=ex,
                         protect=(recipe_path(recipe),))  # --out must not replace the recipe it reads
        _echo(result.summary())
    if json_mode:
        _echo(result.to_json())
    if not result:
        raise GateFailed(f"tune: {result.reason}; no recipe.yaml written")


@app.command()
def prune(
    checkpoint: CheckpointArg = None,
    recipe: RecipeOpt = "cpu-pruned-int8",
    data: DataOpt = None,
    out: OutOpt = Path("runs/pruned"),
    force: ForceOpt = False,
    overrides: SetOpt = None,
    allow_pickle: AllowPickle = False,
    trust_code: TrustCode = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Only the prune stage: writes the pruned checkpoint (and its manifest) to --out."""
    from vlaedge.pipeline import compress as run

    r = _only_stage(recipe, _with_dtype(overrides, dtype, device), "prune", "cpu-pruned-int8")
    result = run(r, out, checkpoint, data, force, allow_pickle, log=_log, trust_code=trust_code)
    _echo(f"wrote {result.out}/pruned (load it like any checkpoint)")


@app.command()
def quantize(
    checkpoint: CheckpointArg = None,
    recipe: RecipeOpt = "cpu-int8",
    data: DataOpt = None,
    out: OutOpt = Path("runs/quantized"),
    force: ForceOpt = False,
    overrides: SetOpt = None,
    allow_pickle: AllowPickle = False,
    trust_code: TrustCode = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Only quantize (and the export it needs): writes the quantized ONNX to --out/model.onnx."""
    from vlaedge.pipeline import compress as run

    r = _only_stage(recipe, _with_dtype(overrides, dtype, device), "quantize", "cpu-int8")
    result = run(r, out, checkpoint, data, force, allow_pickle, log=_log, trust_code=trust_code)
    _echo(f"wrote {result.out}/model.onnx")


@app.command()
def export(
    checkpoint: CheckpointArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "The .onnx file to write; a policy that declares stages writes its plan there instead (model.onnx "
        "-> stages.json + stages/, other.onnx -> other.stages.json + other.stages/)."))] = Path("model.onnx"),
    opset: Annotated[int, typer.Option(min=7, help="ONNX opset.")] = 17,
    force: ForceOpt = False,
    allow_pickle: AllowPickle = False,
    trust_code: TrustCode = False,
    dtype: DtypeOpt = None,
) -> None:
    """Only export: the FP32 policy to ONNX, checked against torch in ONNX Runtime."""
    from vlaedge.compress.export import export_onnx
    from vlaedge.defaults import default_checkpoint
    from vlaedge.models import load_policy
    from vlaedge.recipe import ExportConfig

    if out.exists() and not out.is_file():
        raise VlaedgeError(f"output: {out} exists and is not a regular file", "pass the .onnx file to write")
    from vlaedge.models.stages import plan_paths

    taken = [p for p in (out, *plan_paths(out)) if p.exists()]  # the .onnx, or a staged policy's plan
    if taken and not force:
        raise VlaedgeError(f"output: {taken[0]} already exists", "pass --force to replace it")
    from vlaedge.artifact import resolve_path

    source = resolve_path(checkpoint or default_checkpoint(), "checkpoint")
    target = resolve_path(out, "output")
    if source == target or source in target.parents:
        raise VlaedgeError(f"output: {out} lies inside the checkpoint {source}",
                           "write the .onnx outside the checkpoint folder")
    policy = load_policy(source, allow_pickle, trust_code, dtype or "float32")
    from vlaedge.models.weights import ensure_float32

    cast = ensure_float32(policy, "export", "the export check runs ONNX Runtime on the CPU in FP32")
    if cast:
        _log(cast)
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
    console = Console()
    console.width = max(console.width, 190)  # all columns readable, also when piped (rich assumes 80)
    console.print(table)


@app.command()
def recipes() -> None:
    """List the shipped recipes: pass one by name to --recipe, or copy its file and edit it."""
    from rich.console import Console
    from rich.table import Table

    from vlaedge.recipe import load_recipe, shipped_recipes

    table = Table("name", "target", "stages", "description")
    recipes = shipped_recipes()
    for name, path in recipes.items():
        r = load_recipe(path)
        stages = [s for s in ("prune", "quantize", "export", "engine", "verify", "budgets") if getattr(r, s)]
        table.add_row(name, r.target, ", ".join(stages), r.description or "")
    console = Console()
    console.width = max(console.width, 150)  # all columns readable, also when piped (rich assumes 80)
    console.print(table)
    _echo(f"files: {next(iter(recipes.values())).parent}/NAME.yaml (copy one to edit it)")


ModelArg = Annotated[Path, typer.Argument(help="An .onnx file or a 'vlaedge compress' output directory.")]
BudgetsOpt = Annotated[Path | None, typer.Option(
    "--budgets", "-b", help="Budgets YAML (fields at the top level, under budgets:, or a recipe).")]
ThreadsOpt = Annotated[int | None, typer.Option(
    min=1, max=MAX_THREADS, help="CPU threads for the runtime (default: its own).")]


@app.command()
def verify(
    model: Annotated[Path | None, typer.Argument(help=(
        "Candidate: an .onnx file, a 'vlaedge compress' output directory, or a checkpoint directory with "
        "--runtime torch. Default: the reference itself on torch."))] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="FP32 reference checkpoint. Default: the run's, else the embedded one.",
    )] = None,
    runtime: Annotated[str, typer.Option(help="Candidate runtime (see `vlaedge info`).")] = "ort-cpu",
    data: DataOpt = None,
    out: OutOpt = Path("runs/verify"),
    recipe: Annotated[Path | None, typer.Option(
        "--recipe", "-r",
        help="Take verify settings, budgets and target from this recipe (file or shipped name).")] = None,
    budgets: BudgetsOpt = None,
    frames: Annotated[int | None, typer.Option(help="Open-loop evaluation frames (eval_frames).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Closed-loop episodes per policy (0: none).")] = None,
    min_episodes: Annotated[int | None, typer.Option(help="Fewer episodes: inconclusive.")] = None,
    env: Annotated[str | None, typer.Option(help="Closed-loop env 'package.module:make_env'.")] = None,
    env_adapter: Annotated[str | None, typer.Option(help="Observation adapter 'package.module:fn'.")] = None,
    runs: Annotated[int | None, typer.Option(help="Timed profile runs.")] = None,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="Skip latency profiling.")] = False,
    threads: ThreadsOpt = None,
    target: Annotated[str | None, typer.Option(help="Target name for per-target budgets.")] = None,
    force: ForceOpt = False,
    allow_pickle: AllowPickle = False,
    trust_code: TrustCode = False,
    quiet: QuietOpt = False,
    json_mode: JsonOpt = False,
    device: DeviceOpt = None,
    executor: ExecutorOpt = None,
    address: AddressOpt = None,
) -> None:
    """Reference vs candidate: open-loop drift, optional closed loop, latency; writes the reports to --out."""
    from vlaedge.commands import executor_config, json_summary, run_verify

    _quiet(quiet)
    settings = {"runtime": runtime, "eval_frames": frames, "closed_loop_episodes": episodes,
                "min_episodes": min_episodes, "env": env, "env_adapter": env_adapter, "profile_runs": runs,
                "threads": threads}
    with _stdout_to_stderr(json_mode), _executor(executor_config(recipe, executor, address)):
        result = run_verify(model, checkpoint, data, out, recipe, budgets, settings, not no_profile, target,
                            force, allow_pickle, log=_log, trust_code=trust_code, device=device)
        junit = ", junit.xml" if result.gate is not None else ""
        _echo(f"wrote {out}/report.json, report.md, report.html{junit}")
        if result.gate is not None:
            _echo(result.gate.summary())
    if json_mode:
        _echo(json_summary("verify", result.report, result.gate, out))
    if result.gate is not None and not result.gate:
        raise GateFailed(result.gate.failure_line())


@app.command()
def profile(
    model: ModelArg,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="Policy checkpoint: feeds from its make_inputs on calibration frames.",
    )] = None,
    runtime: Annotated[str, typer.Option(help="Runtime (ort-cpu, ort-cuda, ort-trt, torch).")] = "ort-cpu",
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per model.")] = 200,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs per model.")] = 20,
    threads: ThreadsOpt = None,
    compare: Annotated[list[Path] | None, typer.Option(
        "--compare", help="Other .onnx files timed interleaved with MODEL (repeatable).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Writes DIR/profile.json.")] = Path("runs/profile"),
    remote: Annotated[str | None, typer.Option(help="Profile on user@host over SSH instead.")] = None,
    data: DataOpt = None,
    control_hz: Annotated[float | None, typer.Option(help="Robot control rate (default: data fps).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out folder.")] = False,
    allow_pickle: AllowPickle = False,
    trust_code: TrustCode = False,
    inventory: InventoryOpt = None,
    budgets: Annotated[Path | None, typer.Option(
        "--budgets", "-b", help="With --inventory: judge each device against its target's budgets (a "
        "budgets YAML or a recipe).")] = None,
) -> None:
    """Latency percentiles, control rate, peak memory and file size of MODEL; writes DIR/profile.json."""
    from vlaedge.commands import run_profile

    if inventory is not None:
        _fleet("profile", inventory, model, out, budgets, force, runtime=runtime, runs=runs, warmup=warmup,
               threads=threads)
        return
    path, table = run_profile(model, checkpoint, runtime, runs, warmup, threads, compare or [], out, remote,
                              data, control_hz, allow_pickle, force, trust_code)
    if table:
        _echo(table)
    _echo(f"wrote {path}")


@app.command()
def gate(
    report: Annotated[Path, typer.Argument(help="report.json, or the directory holding it.")],
    budgets: Annotated[Path, typer.Option("--budgets", "-b", help="Budgets YAML, or a recipe with budgets.")],
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="Refuse the report unless it is for this reference checkpoint.")] = None,
    target: Annotated[str | None, typer.Option(help="Target for per-target budgets.")] = None,
    profile_json: Annotated[Path | None, typer.Option(
        "--profile", help="Judge latency from this profile.json (e.g. from the device) instead.",
    )] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write report.json/md/html and junit.xml with the verdict here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out folder.")] = False,
    quiet: QuietOpt = False,
    json_mode: JsonOpt = False,
) -> None:
    """Judge a report against budgets: exit 0 all met, 1 a budget violated, 2 could not run."""
    from vlaedge.commands import json_summary, run_gate

    _quiet(quiet)
    with _stdout_to_stderr(json_mode):
        result = run_gate(report, budgets, checkpoint, target, profile_json, out, force)
        _echo(result.summary())
        if out:
            _echo(f"wrote {out}/report.json, report.md, report.html, junit.xml")
    if json_mode:
        from vlaedge.check.report import load_report
        from vlaedge.commands import load_profile

        judged = load_report(out if out else report)
        if profile_json and not out:  # what the verdict judged: the report with the device's profile
            judged["profile"] = load_profile(profile_json)
        _echo(json_summary("gate", judged, result, out or Path(report)))
    if not result:
        raise GateFailed(result.failure_line())


@app.command()
def engine(
    model: Annotated[Path, typer.Argument(
        help="The exported (Q/DQ) ONNX, a stages.json, or a compress output directory.")],
    recipe: Annotated[Path | None, typer.Option(
        "--recipe", "-r",
        help="Take the engine section, precision and target from this recipe (file or name).")] = None,
    target: Annotated[str | None, typer.Option(help="Target (default: the recipe's).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Directory to write engine/ into (default: the model's directory).")] = None,
    overrides: SetOpt = None,
) -> None:
    """TensorRT engine: a plan here if TensorRT and a GPU are present; always an on-device build bundle."""
    from vlaedge.commands import graph_path, run_engine_plan
    from vlaedge.deploy.engine import build_engine, detect_precision
    from vlaedge.models.stages import is_plan_file
    from vlaedge.onnx_file import read_onnx
    from vlaedge.recipe import EngineConfig

    onnx_path = graph_path(model)  # a run folder's model.onnx, or its stages.json (per-stage graphs)
    if not is_plan_file(onnx_path):
        read_onnx(onnx_path, "engine")  # a truncated or foreign file is one line, before any work
    r = _recipe(recipe, overrides) if recipe else None
    if r is None and target is None:
        raise VlaedgeError("engine: no target", "pass --target (e.g. agx-orin-64gb) or --recipe")
    if is_plan_file(onnx_path):  # one engine bundle per stage (issue 23)
        _echo(run_engine_plan(onnx_path, r, target, out).summary())
        return
    precision = r.quantize.precision if r and r.quantize else detect_precision(onnx_path)
    config = (r.engine if r else None) or EngineConfig()
    result = build_engine(onnx_path, config, target or r.target, precision, out or onnx_path.parent)
    _echo(result.summary())


@app.command("device-check")
def device_check(
    run_dir: Annotated[Path, typer.Argument(help="A 'vlaedge compress' output directory (TensorRT recipe).")],
    frames: Annotated[int, typer.Option(min=1, help="Evaluation frames compared with ONNX Runtime.")] = 64,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs of the plan.")] = 200,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 20,
    builder: Annotated[str, typer.Option(help="python (TensorRT API) or trtexec (build.sh).")] = "python",
    trust_code: TrustCode = False,
    inventory: InventoryOpt = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="With --inventory: fleet.json, fleet.md and one folder per device.")] = Path(
        "runs/fleet-device-check"),
    force: ForceOpt = False,
) -> None:
    """On the device: build RUN_DIR's TensorRT plan, compare it with ONNX Runtime, profile it, one summary."""
    from vlaedge.device_check import REPORT_NAME
    from vlaedge.device_check import device_check as run

    if inventory is not None:
        _fleet("device-check", inventory, run_dir, out, None, force, frames=frames, runs=runs, warmup=warmup,
               builder=builder)
        return

    result = run(run_dir, frames, runs, warmup, builder, log=_log, trust_code=trust_code)
    _echo(result.summary())
    _echo(f"wrote {run_dir / REPORT_NAME}")


@app.command()
def estimate(
    model: Annotated[Path, typer.Argument(
        help="The ONNX model (external data is not needed), a stages.json, or a compress output directory.")],
    target: Annotated[str, typer.Option(help="A TensorRT target; see vlaedge targets.")],
    batch: Annotated[int, typer.Option(min=1, help="Batch size for dynamic batch dimensions.")] = 1,
    precision: Annotated[str, typer.Option(help="Non-quantized ops in: fp16, bf16, fp32.")] = "fp16",
    top: Annotated[int, typer.Option(min=1, help="Slowest kernels to list.")] = 15,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the estimate to this file (not inside a run directory).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --json file.")] = False,
    input_shape: Annotated[
        list[str] | None, typer.Option(help="Fix an input's shape, e.g. image=1x3x224x224 (repeatable).")
    ] = None,
    allow_unknown_dims: Annotated[
        bool, typer.Option(help="Take dims shape inference cannot resolve as 1 (warns) instead of refusing.")
    ] = False,
) -> None:
    """Fusion-aware, calibrated roofline latency and memory estimate of MODEL on a target (no device)."""
    import json

    from vlaedge.commands import check_output_file, graph_path, run_estimate_plan, write_output_file
    from vlaedge.deploy.estimate import estimate as run
    from vlaedge.models.stages import is_plan_file
    from vlaedge.onnx_file import read_onnx

    given = model
    model = graph_path(model)  # a run folder's model.onnx, or its stages.json (per-stage graphs)
    if json_out:  # refused before any work: never clobbered, never inside a run directory
        check_output_file(json_out, force, "--json", inputs=(given, model))
    if is_plan_file(model):  # each stage priced, the denoise loop's stage per step (issue 23)
        priced, table = run_estimate_plan(model, target, batch, precision, input_shape or [],
                                          allow_unknown_dims)
        _echo(table)
        _echo("assumptions: " + "; ".join(priced["assumptions"]))
    else:
        read_onnx(model, "estimate")  # a truncated or foreign file is one line, before any work
        result = run(model, target, batch, precision, input_shape or [], allow_unknown_dims)
        _echo(result.table(top))
        _echo("assumptions: " + "; ".join(result.assumptions))
        priced = result.to_dict()
    if json_out:
        write_output_file(json_out, json.dumps(priced, indent=1) + "\n")
        _echo(f"wrote {json_out}")


def main() -> None:
    """Console entry point: runs the app and maps every exception to an exit code and one line."""
    global _debug
    _debug = os.environ.get("VLAEDGE_DEBUG", "") not in ("", "0")
    try:
        code = app(standalone_mode=False, prog_name="vlaedge")  # typer.Exit(n) returns n; --help returns 0
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C outside a command
        _interrupted()
    except typer.TyperException as e:  # a usage error: one line and the fix, not a panel
        command = e.ctx.command_path if getattr(e, "ctx", None) else "vlaedge"
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        given = _given_value(getattr(e, "param", None))
        typer.secho(f"error: {command}: {message}{f' (got {given!r})' if given is not None else ''}",
                    err=True, fg="red")
        typer.echo(f"fix: '{command} --help' lists the arguments and options", err=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 (the one error boundary: nothing else may print a traceback)
        if _debug:
            traceback.print_exc()
        code, lines = describe(e)
        for i, line in enumerate(lines):
            typer.secho(line, err=True, fg="red" if i == 0 else None)
        sys.exit(code)
    if code == INTERRUPTED:  # typer turns a KeyboardInterrupt inside a command into Exit(130)
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _given_value(param) -> str | None:
    """What the command line gave the option a usage error names (typer's message leaves the value out:
    "Input should be less than or equal to 1024"), or None."""
    opts = [o for o in getattr(param, "opts", None) or [] if o.startswith("-")]
    args, given = sys.argv[1:], None
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                given = args[i + 1]
            elif arg.startswith(f"{opt}="):
                given = arg[len(opt) + 1:]
    return given


INTERRUPTED = 130  # what typer returns for Ctrl-C; no vlaedge command exits with it


def _interrupted() -> None:
    typer.secho("interrupted: stopped by Ctrl-C (KeyboardInterrupt) before the command finished",
                err=True, fg="red")
    typer.echo("  fix: run it again; an output it was staging was not moved into place", err=True)
    sys.exit(2)  # the command could not run: exit codes are 0/1/2 only, never a shell's 130


if __name__ == "__main__":
    main()

"""Where `vlaedge tune` writes: the discipline of `vlaedge compress`'s output (`vlaedge.artifact.OutputDir`)
with a resume.

Before any work the output is refused when it is `/`, `.` or a folder above it, a file or a device, is,
holds or lies inside an input (the checkpoint, the dataset, the recipe file), is a compress run directory,
or holds files `vlaedge tune` does not write (unless --force). A lock beside it (`.OUT.lock`) refuses a
second tune or compress on it. The run writes into a staging folder beside it (`.OUT.partial-*`) and moves
that into place only when everything is written, so OUT is always the complete previous result or the
complete new one: a failed or interrupted run leaves no folder, no empty `variants/` and no half-written
file. Resuming reads the previous OUT's `variants/` (validated by `vlaedge.tune.cache`) and never writes
it; the new OUT's `variants/` holds the variants of this run. --force starts over without reading it.
"""

from __future__ import annotations

from pathlib import Path

from vlaedge.artifact import MANIFEST, OutputDir, check_output
from vlaedge.errors import VlaedgeError

WRITTEN = ("tune.json", "tune.md", "tune.html", "recipe.yaml", "variants")  # what a tune folder holds


class TuneOutput(OutputDir):
    """The staging folder of one tune run (`.path`), moved to `final` on `commit()`; no manifest.json (a tune
    folder is not a compress run directory: tune.json describes it).

    Args:
        final: the output directory.
        force: replace an existing `final` without reading its cache.
        protect: input paths `final` must not be, contain or lie inside.

    Raises:
        VlaedgeError: a refused output (see the module docstring), or another run holding the lock.
    """

    def __init__(self, final: str | Path, force: bool = False, protect: tuple[Path | None, ...] = ()):
        final = Path(final)
        check_tune_output(final, force, protect)
        self.previous = None if force or not final.is_dir() else final / "variants"
        super().__init__(final, force=True, protect=protect, command="tune")  # resumed: replaced on commit

    def commit(self) -> Path:
        return self.move_into_place()


def check_tune_output(final: Path, force: bool, protect: tuple[Path | None, ...] = ()) -> None:
    """Refuses an output `vlaedge tune` must not write, before any work (see the module docstring).

    Raises:
        VlaedgeError: naming the path and the fix.
    """
    check_output(final, True, protect)  # `/`, `.`, files, devices, inputs: existing folders are judged here
    if not final.is_dir():
        return
    if (final / MANIFEST).is_file():  # as `vlaedge.commands.refuse_run_directory` (a higher layer) says it
        raise VlaedgeError(f"tune: {final} is a run directory; its {MANIFEST} lists files with their sha256, "
                           "which writing there would invalidate",
                           f"write to a folder of its own, e.g. --out {final / 'tune'}")
    foreign = sorted(p.name for p in final.iterdir() if p.name not in WRITTEN)
    if foreign and not force:
        raise VlaedgeError(f"tune: {final} holds files vlaedge tune does not write ({', '.join(foreign[:3])}"
                           f"{', ...' if len(foreign) > 3 else ''}); resuming there would replace them",
                           "choose another --out, or pass --force to replace the folder")

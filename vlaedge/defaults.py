"""Where the embedded defaults live: the trained default policy and the sample calibration dataset."""

from __future__ import annotations

from pathlib import Path

from vlaedge.errors import VlaedgeError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = PACKAGE_DIR / "assets" / "default_policy"
DEFAULT_DATASET = PACKAGE_DIR / "assets" / "calibration" / "tabletop"
MAX_THREADS = 1024  # CPU threads a recipe or option may ask for: more is a typo, not a machine


def default_checkpoint() -> Path:
    """The committed default policy (nano reference VLA, chunk head, trained on the tabletop task)."""
    if not (DEFAULT_CHECKPOINT / "model.safetensors").is_file():
        raise VlaedgeError(f"default policy: {DEFAULT_CHECKPOINT} is missing",
                           "reinstall vlaedge, or recreate it with 'vlaedge train --out "
                           f"{DEFAULT_CHECKPOINT}'")
    return DEFAULT_CHECKPOINT


def default_dataset() -> Path:
    """The sample tabletop dataset that ships inside the package (60 expert episodes, LeRobot v3)."""
    if not (DEFAULT_DATASET / "meta" / "info.json").is_file():
        raise VlaedgeError(f"default dataset: {DEFAULT_DATASET} is missing (it ships inside the package)",
                           "reinstall vlaedge, pass --data with your own episodes, or record some with "
                           f"'vlaedge record {DEFAULT_DATASET} --episodes 60 --seed 0'")
    return DEFAULT_DATASET

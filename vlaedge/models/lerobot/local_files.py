"""Where a LeRobot checkpoint's outside files are: the VLM config and the tokenizer, never the Hub.

LeRobot names a backbone folder by Hub id (SmolVLA's `vlm_model_name`, e.g.
"HuggingFaceTB/SmolVLM2-500M-Video-Instruct") or by a local path, and fetches it when it is a Hub id.
vlaedge never downloads: a name resolves, in order, to
1. an absolute path, or a path relative to the `pretrained_model/` folder (as LeRobot wrote it when the
   backbone was a local folder);
2. the Hugging Face cache, offline (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
   `~/.cache/huggingface/hub`): `models--ORG--NAME/snapshots/<rev>/`, the newest snapshot holding the file;
3. otherwise, a one-line error naming the file to put where.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlaedge.errors import VlaedgeError


def hub_cache() -> Path:
    """The Hugging Face hub cache folder (read only; nothing is fetched)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME")
    return Path(home) / "hub" if home else Path.home() / ".cache" / "huggingface" / "hub"


def local_folder(name: str, root: Path, needs: str, what: str) -> Path:
    """The local folder holding `needs` (a file name, e.g. "config.json") for the backbone `name`.

    Args:
        name: the name as the checkpoint stores it: a Hub id, an absolute path, or a path relative to
            `root`.
        root: the `pretrained_model/` folder.
        needs: the file that must be in the folder, e.g. "config.json" or "tokenizer.json".
        what: where the name came from, for errors, e.g. "config.json: vlm_model_name".

    Returns:
        The folder (resolved), holding `needs`.

    Raises:
        VlaedgeError: the name resolves to no folder holding `needs`; the message names the file to put
            where (vlaedge never downloads).
    """
    if not isinstance(name, str) or not name.strip():
        raise VlaedgeError(f"lerobot: {what} is {name!r}, not a folder or Hub id",
                           "set it to the backbone folder (with config.json and tokenizer.json)")
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [root / path]
    if not path.is_absolute() and name.count("/") == 1 and not name.startswith("."):
        snapshots = hub_cache() / f"models--{name.replace('/', '--')}" / "snapshots"
        if snapshots.is_dir():
            candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in candidates:
        if (folder / needs).is_file():
            return folder.resolve()
    where = candidates[0]
    raise VlaedgeError(
        f"lerobot: {what} is {name!r}, and no {needs} was found for it (looked in {where} and the Hugging "
        f"Face cache {hub_cache()}); vlaedge never downloads",
        f"put the backbone's {needs} in {where}/, or run `hf download {name}` (huggingface_hub's CLI) on a "
        "machine with network and copy the cache, or set the name to a local folder that holds it")

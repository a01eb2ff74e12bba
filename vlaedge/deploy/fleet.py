"""A fleet of devices as one: an inventory file names each device (its name, SSH address and deployment
target), and `on_each` runs one remote step (`vlaedge.deploy.remote`: profile, device-check) on every
device at once, each into its own folder. Any device that fails stops the whole run with one line naming
the device, its address and the cause (the caller's output stays unwritten); Ctrl-C interrupts the ssh
children with the same signal.

Inventory (YAML, validated strictly like a recipe):

    ssh_config: ~/.ssh/config          # optional: an ssh config file (ssh -F)
    devices:
      - name: orin-1                   # a folder name: letters, digits, '-', '_', '.'
        ssh: nvidia@10.0.0.5           # user@host or an ssh config Host alias
        target: agx-orin-64gb          # `vlaedge targets`: the budgets of `budgets.targets.<target>` apply
        vlaedge: ~/venv/bin/vlaedge    # optional: the vlaedge command on the device
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlaedge import safe_yaml
from vlaedge.errors import VlaedgeError
from vlaedge.recipe import format_validation_error

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Device(BaseModel):
    """One device of the fleet."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the device's name: its folder in the output and its table's title")
    ssh: str = Field(description="user@host or an ssh config Host alias")
    target: str = Field(description="a name from `vlaedge targets`: whose budgets apply to this device")
    port: int | None = Field(None, ge=1, le=65535, description="ssh port; default: the ssh config's")
    vlaedge: str = Field("vlaedge", description="the vlaedge command on the device")
    remote_dir: str = Field("~/vlaedge-remote", description="where runs are staged on the device")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r} is not a plain name (letters, digits, '.', '_', '-'; at most 64)")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        from vlaedge.targets import TARGETS, get_target

        try:
            get_target(value)
        except VlaedgeError as e:
            raise ValueError(f"unknown target {value!r} ({e.hint}; known: {', '.join(TARGETS)})") from None
        return value


class Inventory(BaseModel):
    """The devices, and the ssh config to reach them with."""

    model_config = ConfigDict(extra="forbid")

    devices: list[Device] = Field(min_length=1, description="at least one device")
    ssh_config: Path | None = Field(None, description="an ssh config file (ssh -F); default: yours")

    @model_validator(mode="after")
    def _unique(self):
        names = [d.name for d in self.devices]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"device names must be unique: {', '.join(twice)} appear twice")
        return self


def load_inventory(path: str | Path) -> Inventory:
    """Reads and validates an inventory file.

    Raises:
        VlaedgeError: unreadable file, bad YAML, an unknown key, a missing field, an unknown target or a
            repeated name, as `path: field: message` with the fix.
    """
    path = Path(path)
    raw = safe_yaml.read(path, "inventory", "pass a YAML file with a devices: list (docs: guides/cluster.md)")
    try:
        inventory = Inventory.model_validate(raw)
    except ValidationError as e:
        raise VlaedgeError(f"inventory {path}: {format_validation_error(e, Inventory)}",
                           "each device needs name, ssh and target (docs: guides/cluster.md)") from None
    if inventory.ssh_config is not None:
        inventory.ssh_config = (path.parent / inventory.ssh_config.expanduser()).resolve()
    return inventory


def on_each(inventory: Inventory, step: Callable[[Device, Path], Path], folder: Path,
            what: str) -> dict[str, Path]:
    """Runs `step(device, folder / device.name)` on every device at once.

    Returns:
        {device name: what `step` returned (the pulled report)} in inventory order.

    Raises:
        VlaedgeError: the first device (in inventory order) that failed, as "fleet: WHAT on NAME (SSH):
            cause" with the device's fix; the other devices' steps are waited for, not used.
    """
    with ThreadPoolExecutor(max_workers=len(inventory.devices), thread_name_prefix="fleet") as pool:
        futures = [(d, pool.submit(step, d, folder / d.name)) for d in inventory.devices]
        results, failed = {}, []
        for device, future in futures:
            try:
                results[device.name] = future.result()
            except VlaedgeError as e:
                failed.append((device, e))
    if failed:
        device, e = failed[0]
        others = f" ({len(failed) - 1} other device(s) failed too)" if len(failed) > 1 else ""
        raise VlaedgeError(f"fleet: {what} on {device.name} ({device.ssh}): "
                           f"{e.message.removeprefix('remote: ')}{others}", e.hint)
    return results

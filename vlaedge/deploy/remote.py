"""Remote profiling: drive a Jetson (or any Linux box with vlaedge) over SSH from the workstation.

`profile_remote` copies the model (or the engine bundle) to the device, builds the engine there with the
bundle's build.sh when the runtime is `trt`, runs `vlaedge profile` on the device and pulls the report
back. It uses the system `ssh` with the user's own config and keys: `BatchMode=yes` (never a password
prompt; no password is ever passed), `StrictHostKeyChecking=yes` (an unknown host key is an error, not
a question), and every remote argument quoted with `shlex.quote`. Files travel as a tar stream over the
same ssh (no scp, whose remote paths are shell-expanded by older servers).
"""

from __future__ import annotations

import io
import secrets
import shlex
import subprocess
import tarfile
import time
from pathlib import Path

from vlaedge.artifact import OutputDir
from vlaedge.errors import VlaedgeError

SSH_TIMEOUT_S = 15  # ConnectTimeout
_MISSING = 42  # exit status of the remote probe when vlaedge is not found


def profile_remote(
    host: str,
    model: Path,
    runtime: str = "ort-cpu",
    runs: int = 200,
    warmup: int = 20,
    threads: int | None = None,
    out: Path = Path("runs/remote"),
    port: int | None = None,
    remote_dir: str = "~/vlaedge-remote",
    remote_vlaedge: str = "vlaedge",
    build: bool = True,
    ssh_config: Path | None = None,
    timeout_s: float = 3600,
) -> Path:
    """Profiles `model` on `host` and returns the local path of the pulled profile.json.

    Args:
        host: `user@host` or a Host alias from your ssh config.
        model: an .onnx file (ort runtimes), an engine bundle directory (build.sh + model.onnx), or a
            compress output directory containing `engine/`.
        runtime: the runtime on the device; `trt` needs a bundle and builds it there first.
        runs, warmup, threads: passed to `vlaedge profile` on the device.
        out: local directory for the pulled report (profile.json and whatever else the profiler wrote).
        port: ssh port (default: your ssh config's).
        remote_dir: where runs are staged on the device (a fresh sub-directory per run).
        remote_vlaedge: the vlaedge command on the device (e.g. `~/venv/bin/vlaedge`).
        build: with `trt`, run build.sh on the device first (False reuses a plan already in the bundle).
        ssh_config: an ssh config file (`ssh -F`); default: yours.
        timeout_s: limit for each remote step.

    Returns:
        `out/profile.json`.

    Raises:
        VlaedgeError: host unreachable, host key unknown or changed, key refused, vlaedge or TensorRT
            missing on the device, or a failed remote step, each as one line with the fix.

    Example:
        >>> profile_remote("nvidia@orin.local", Path("runs/orin-int8/engine"), runtime="trt")
    """
    files, remote_model = _payload(Path(model), runtime)
    payload = _tar(files)
    ssh, run_dir = open_run(host, port, ssh_config, timeout_s, remote_dir, remote_vlaedge)
    ssh.run(f"tar -C {run_dir} -xf -", "copy the model", stdin=payload)
    if runtime == "trt" and build:
        _remote_build(ssh, run_dir)
    cmd = [
        remote_vlaedge,
        "profile",
        remote_model,
        "--runtime",
        runtime,
        "--runs",
        str(runs),
        "--warmup",
        str(warmup),
        *(["--threads", str(threads)] if threads else []),
        "--out",
        "profile",
    ]
    ssh.run(
        f"cd {run_dir} && "
        + " ".join(_remote_cmd(c) if i == 0 else shlex.quote(c) for i, c in enumerate(cmd)),
        "profile",
    )
    return pull_profile(ssh, host, run_dir, out)


def open_run(host: str, port: int | None, ssh_config: Path | None, timeout_s: float, remote_dir: str,
             remote_vlaedge: str) -> tuple[Ssh, str]:
    """Connects to `host`, makes a fresh run directory under `remote_dir` and checks vlaedge is there.

    Returns:
        (the `Ssh`, the run directory as a quoted remote path).

    Raises:
        VlaedgeError: host unreachable, host key unknown, key refused, or vlaedge missing on the device.
    """
    ssh = Ssh(host, port, ssh_config, timeout_s)
    run_dir = f"{_remote_path(remote_dir)}/run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    probe = (
        f"mkdir -p {run_dir} && {{ command -v {_remote_cmd(remote_vlaedge)} >/dev/null 2>&1 || "
        f"exit {_MISSING}; }}"
    )
    if ssh.run(probe, "connect").returncode == _MISSING:
        raise VlaedgeError(
            f"remote: {remote_vlaedge!r} is not found on {host}",
            "install vlaedge on the device (pip install vlaedge) or pass --remote-vlaedge PATH",
        )
    return ssh, run_dir


def device_check_remote(
    host: str,
    run: Path,
    out: Path,
    frames: int = 64,
    runs: int = 200,
    warmup: int = 20,
    builder: str = "python",
    port: int | None = None,
    remote_dir: str = "~/vlaedge-remote",
    remote_vlaedge: str = "vlaedge",
    ssh_config: Path | None = None,
    timeout_s: float = 3600,
) -> Path:
    """Runs `vlaedge device-check` on `host` on a copy of the compress output `run` and pulls the result.

    The run directory travels as a tar over ssh (its manifest, model and engine bundle); the checkpoint and
    dataset its manifest names must exist at the same paths on the device (device-check reads the
    evaluation split from them).

    Returns:
        `out/device_check.json`.

    Raises:
        VlaedgeError: as `profile_remote`, or device-check refusing there (no TensorRT, no GPU), with the
            device's own line.
    """
    run = Path(run)
    if not (run / "manifest.json").is_file():
        raise VlaedgeError(f"remote: {run} is not a 'vlaedge compress' output directory",
                           "pass the directory 'vlaedge compress --recipe ... --out DIR' wrote")
    files = [(p, str(Path("run") / p.relative_to(run))) for p in sorted(run.rglob("*")) if p.is_file()]
    ssh, run_dir = open_run(host, port, ssh_config, timeout_s, remote_dir, remote_vlaedge)
    ssh.run(f"tar -C {run_dir} -xf -", "copy the run", stdin=_tar(files))
    cmd = [remote_vlaedge, "device-check", "run", "--frames", str(frames), "--runs", str(runs), "--warmup",
           str(warmup), "--builder", builder]
    ssh.run(f"cd {run_dir} && " + " ".join(_remote_cmd(c) if i == 0 else shlex.quote(c)
                                           for i, c in enumerate(cmd)), "device-check")
    pulled = ssh.run(f"cat {run_dir}/run/device_check.json", "pull the device check", binary=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_bytes(pulled.stdout)
    return out / "device_check.json"


def pull_profile(ssh: Ssh, host: str, run_dir: str, out: Path) -> Path:
    """Copies the device's `run_dir/profile/` into `out` (atomically) and returns `out/profile.json`.

    Raises:
        VlaedgeError: the device sent back something that is not a tar, or a tar with entries outside
            the destination (absolute paths, ``../``, links or devices), or no profile.json.
    """
    pulled = ssh.run(f"tar -C {run_dir}/profile -cf - .", "pull the report", binary=True)
    with OutputDir(out, force=True) as od:  # the command refused an existing --out without --force
        try:
            with tarfile.open(fileobj=io.BytesIO(pulled.stdout)) as tar:
                tar.extractall(od.path, filter="data")  # "data": no absolute paths, no ../, no devices
        except tarfile.TarError as e:
            raise VlaedgeError(
                f"remote: {host} sent back something that is not a safe tar of {run_dir}/profile "
                f"({type(e).__name__}: {str(e)[:120]})",
                "check the device's vlaedge installation (the same version as this one)",
            ) from None
        if not (od.path / "profile.json").is_file():
            raise VlaedgeError(
                f"remote: the profiler on {host} wrote no profile.json in {run_dir}/profile",
                "check that the device's vlaedge is the same version as this one",
            )
        od.commit()
    return Path(out) / "profile.json"


class Ssh:
    """`ssh` with batch mode and strict host key checking; errors become one-line VlaedgeErrors."""

    def __init__(self, host: str, port: int | None, config: Path | None, timeout_s: float):
        if host.startswith("-"):
            raise VlaedgeError(
                f"remote: host {host!r} starts with '-'", "pass user@host or an ssh config alias"
            )
        self.host, self.timeout_s = host, timeout_s
        self.base = [
            "ssh",
            "-T",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={SSH_TIMEOUT_S}",
        ]
        if config is not None:
            self.base += ["-F", str(config)]
        if port is not None:
            self.base += ["-p", str(int(port))]

    def run(
        self, command: str, step: str, stdin: bytes | None = None, binary: bool = False
    ) -> subprocess.CompletedProcess:
        """Runs `command` (already quoted) on the host; a non-zero status other than the probe's raises."""
        try:
            res = subprocess.run(
                [*self.base, "--", self.host, command],
                input=stdin,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as e:
            raise VlaedgeError("remote: no ssh client here", "install openssh-client") from e
        except subprocess.TimeoutExpired as e:
            raise VlaedgeError(
                f"remote: {step} on {self.host} took over {self.timeout_s:.0f} s",
                "retry, or check the device (is it throttled or swapping?)",
            ) from e
        if res.returncode == 0 or (res.returncode == _MISSING and step == "connect"):
            return res
        err = res.stderr.decode(errors="replace").strip()
        if res.returncode == 255:
            raise ssh_error(self.host, err)
        lines = err.splitlines() or [f"exit status {res.returncode}"]
        last = next((ln for ln in reversed(lines) if ln.lower().startswith("error")), lines[-1])
        raise VlaedgeError(
            f"remote: {step} failed on {self.host}: {last[:300]}",
            "run the same step on the device by hand to see the whole log",
        )


def ssh_error(host: str, stderr: str) -> VlaedgeError:
    """One clear error for an ssh connection failure (exit status 255), from ssh's own message."""
    low = stderr.lower()
    if "host key verification failed" in low or "no matching host key" in low:
        return VlaedgeError(
            f"remote: the host key of {host} is unknown or has changed (strict checking is on)",
            f"verify the key and add it once: ssh {host} (answer yes after checking the "
            "fingerprint), or ssh-keyscan into ~/.ssh/known_hosts",
        )
    if "permission denied" in low:
        return VlaedgeError(
            f"remote: {host} refused the login (no password prompts in batch mode)",
            f"install your key on the device: ssh-copy-id {host}",
        )
    if any(
        s in low for s in ("could not resolve", "connection refused", "timed out", "no route", "unreachable")
    ):
        line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        return VlaedgeError(
            f"remote: cannot reach {host}: {line[:200]}",
            "check the address, the port and that sshd runs on the device",
        )
    return VlaedgeError(
        f"remote: ssh to {host} failed: {stderr.strip()[:300] or 'exit status 255'}",
        f"try: ssh -o BatchMode=yes {host} true",
    )


def _remote_build(ssh: Ssh, run_dir: str) -> None:
    from vlaedge.deploy.bundle import TRTEXEC_MISSING_EXIT

    res = subprocess.run(
        [*ssh.base, "--", ssh.host, f"cd {run_dir} && bash build.sh"],
        capture_output=True,
        timeout=ssh.timeout_s,
        check=False,
    )
    err = res.stderr.decode(errors="replace").strip()
    if res.returncode == TRTEXEC_MISSING_EXIT:
        raise VlaedgeError(
            f"remote: TensorRT is absent on {ssh.host} (build.sh found no trtexec)",
            "install JetPack's TensorRT on the device (sudo apt install nvidia-tensorrt), or "
            "profile with --runtime ort-cpu",
        )
    if res.returncode == 255:
        raise ssh_error(ssh.host, err)
    if res.returncode != 0:
        raise VlaedgeError(
            f"remote: the engine build failed on {ssh.host}: {(err.splitlines() or ['?'])[-1][:300]}",
            f"see {run_dir}/build.log on the device",
        )


def _payload(model: Path, runtime: str) -> tuple[list[tuple[Path, str]], str]:
    """(local file, name in the run dir) pairs to copy, and the model path to profile there."""
    from vlaedge.deploy.engine import external_data
    from vlaedge.runtimes.plan import ENGINE_DIR, ONNX_NAME

    for bundle in (model, model / ENGINE_DIR, model.parent, model.parent / ENGINE_DIR):
        if (
            bundle.is_dir()
            and (bundle / "build.sh").is_file()
            and (runtime == "trt" or bundle != model.parent)
        ):
            model = bundle
            break
    if model.is_dir() and (model / "build.sh").is_file():
        return [(p, str(p.relative_to(model))) for p in sorted(model.rglob("*")) if p.is_file()], ONNX_NAME
    if runtime == "trt":
        raise VlaedgeError(
            f"remote: --runtime trt needs an engine bundle (a directory with build.sh), got {model}",
            "make one: vlaedge engine MODEL.onnx --target T --out DIR",
        )
    if model.is_dir() and (model / ONNX_NAME).is_file():
        model = model / ONNX_NAME
    if not model.is_file():
        raise VlaedgeError(f"remote: model {model} does not exist", "pass an .onnx file or an engine bundle")
    files = [(model, ONNX_NAME)] + [(model.parent / loc, loc) for loc in external_data(model)]
    return files, ONNX_NAME


def _tar(files: list[tuple[Path, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, name in files:
            tar.add(path, arcname=name)
    return buf.getvalue()


def _remote_path(path: str) -> str:
    """Quotes a remote path, keeping a leading ~/ expandable ("$HOME"/...)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _remote_cmd(cmd: str) -> str:
    return _remote_path(cmd) if cmd.startswith("~") else shlex.quote(cmd)

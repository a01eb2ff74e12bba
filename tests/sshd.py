"""A throwaway sshd on 127.0.0.1 as a "device" without a GPU (host and user keys made here, strict host key
checking, batch mode, no passwords), for tests/test_remote.py and tests/test_fleet.py. Needs
/usr/sbin/sshd, ssh and ssh-keygen (`make test-deps` installs Debian's openssh-server as root)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
ROOT = Path(__file__).resolve().parent.parent
VLAEDGE = ROOT / ".venv" / "bin" / "vlaedge"  # the checkout's console script, run over ssh
MISSING = (not SSHD.exists() or not shutil.which("ssh") or not shutil.which("ssh-keygen"))
REASON = ("needs /usr/sbin/sshd, ssh and ssh-keygen (run 'make test-deps' as root to install "
          "openssh-server)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """sshd serving from folder `d` as ssh config Host `alias`: `host_block` and `known_hosts` are what a
    client's ssh config and known_hosts file need; `start()` waits until it accepts connections."""

    def __init__(self, d: Path, alias: str):
        d.mkdir(parents=True, exist_ok=True)
        self.d, self.alias, self.port = d, alias, free_port()
        host_pub = keygen(d / "host_key")
        (d / "authorized_keys").write_text(keygen(d / "user_key") + "\n")
        (d / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
AuthorizedKeysFile {d / "authorized_keys"}
PidFile {d / "sshd.pid"}
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
""")
        self.known_hosts = f"[127.0.0.1]:{self.port} {host_pub}\n"
        self.host_block = f"""Host {alias}
  HostName 127.0.0.1
  Port {self.port}
  User {getpass.getuser()}
  IdentityFile {d / "user_key"}
  IdentitiesOnly yes
  GlobalKnownHostsFile /dev/null
"""

    def start(self) -> str | None:
        """Starts sshd; None when it accepts connections, else why not (its log's tail)."""
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.log = open(self.d / "sshd.log", "w")  # noqa: SIM115 (open while sshd runs)
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.d / "sshd_config")],
                                     stderr=self.log)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return None
            except OSError:
                if self.proc.poll() is not None:
                    return f"sshd did not start: {(self.d / 'sshd.log').read_text()[-300:]}"
                time.sleep(0.05)
        return "sshd did not accept connections within 5 s"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()

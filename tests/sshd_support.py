"""A loopback sshd for tests: throwaway host and user keys, its own config, in the foreground."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
SSHD = Path("/usr/sbin/sshd")

__all__ = ["SSHD", "Sshd", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """An sshd on 127.0.0.1 with a throwaway host key and user key, its own config, in the foreground."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = free_port()
        self.host_key = base / "host_ed25519"
        self.user_key = base / "id_ed25519"
        self.known_hosts = base / "known_hosts"
        for key in (self.host_key, self.user_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        (base / "authorized_keys").write_text(Path(f"{self.user_key}.pub").read_text())
        os.chmod(base / "authorized_keys", 0o600)
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config = base / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {base}/sshd.pid\nAuthorizedKeysFile {base}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"SetEnv PATH={BIN}:/usr/local/bin:/usr/bin:/bin\nPermitUserEnvironment no\n"
            "LogLevel ERROR\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True, mode=0o755)
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(base / "sshd.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(base / 'sshd.log').read_text()}")
            time.sleep(0.05)

    @property
    def ssh_options(self) -> list[str]:
        return [
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
        ]

    def target_vars(self, path: Path) -> dict[str, Any]:
        return {
            "hvdump_archive_target": {
                "type": "ssh",
                "location": "root@127.0.0.1",
                "path": str(path),
                "port": self.port,
            },
            "hvdump_archive_ssh_key": str(self.user_key),
            "hvdump_archive_ssh_options": self.ssh_options,
            "hvdump_archive_remote_hvdump": str(BIN / "hvdump"),
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

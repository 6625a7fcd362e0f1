"""A real registry for tests: Debian's docker-registry on a loopback port."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from pytorch_cuda.publish.registry import DOCKER_MANIFEST

USER, PASSWORD = "publisher", "correct-horse-battery"
ACCESS_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


class LocalRegistry:
    """A docker-registry process on a loopback port, its storage and its access log."""

    def __init__(self, program: str, root: Path, htpasswd: Path | None = None) -> None:
        self.program = program
        self.root = root
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.log = root / "registry.log"
        self.config = root / "config.yml"
        config = {
            "version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.address, "secret": uuid.uuid4().hex},
        }
        if htpasswd:
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
        self.config.write_text(json.dumps(config))
        self.auth = (f"Basic {base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()}"
                     if htpasswd else None)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the registry and wait until it answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.program, "serve", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = self._status("/v2/")
            if status in (200, 401):
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"docker-registry did not answer:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the registry process (idempotent)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _open(self, path: str, accept: str | None = None):
        headers = {k: v for k, v in (("Authorization", self.auth), ("Accept", accept)) if v}
        request = urllib.request.Request(f"http://{self.address}{path}", headers=headers)
        return urllib.request.urlopen(request, timeout=10)

    def _status(self, path: str) -> int | None:
        try:
            with self._open(path) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def tags(self, repository: str) -> list[str]:
        """Tags of a repository (none when it does not exist)."""
        try:
            with self._open(f"/v2/{repository}/tags/list") as response:
                return sorted(json.loads(response.read()).get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def digest(self, repository: str, tag: str) -> str | None:
        """The manifest digest a tag names, or None."""
        try:
            with self._open(f"/v2/{repository}/manifests/{tag}", DOCKER_MANIFEST) as response:
                return response.headers["Docker-Content-Digest"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request in the access log."""
        return [(m["method"], m["path"], int(m["status"]))
                for m in ACCESS_RE.finditer(self.log.read_text())]

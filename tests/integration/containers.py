"""A container helper for tests: every container it starts is removed, pass or fail."""

from __future__ import annotations

import json
import time
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container


class TrackedContainer:
    """Starts containers from one image and always removes them in `cleanup`."""

    def __init__(self, client: docker.DockerClient, image: str) -> None:
        self.client = client
        self.image = image
        self.started: list[Container] = []

    def start(self, command: Any = None, **kwargs: Any) -> Container:
        """Start a detached container; remember it for cleanup."""
        container = self.client.containers.run(self.image, command, detach=True, **kwargs)
        self.started.append(container)
        return container

    def run(self, command: Any, timeout: float = 600, stderr: bool = True,
            **kwargs: Any) -> tuple[int, str]:
        """Run a command to completion in a fresh container; return (exit code, output)."""
        container = self.start(command, **kwargs)
        try:
            code = container.wait(timeout=timeout)["StatusCode"]
            if code != 0:
                stderr = True
            return code, container.logs(stdout=True, stderr=stderr).decode(errors="replace")
        finally:
            self._remove(container)

    def run_json(self, command: Any, **kwargs: Any) -> Any:
        """Run a command that prints one JSON document on stdout; fail with its output otherwise."""
        code, out = self.run(command, stderr=False, **kwargs)
        assert code == 0, f"{self.image}: {command} exited {code}:\n{out[-3000:]}"
        return parse_json(out, f"{self.image}: {command}")

    def wait_healthy(self, container: Container, timeout: float = 240) -> str:
        """Wait for the HEALTHCHECK verdict; return the final status."""
        deadline = time.monotonic() + timeout
        status = "starting"
        while time.monotonic() < deadline:
            container.reload()
            status = container.attrs["State"].get("Health", {}).get("Status", "none")
            if status in ("healthy", "unhealthy") or container.status == "exited":
                return status
            time.sleep(2)
        return status

    def _remove(self, container: Container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        if container in self.started:
            self.started.remove(container)

    def cleanup(self) -> None:
        """Remove every container this helper started."""
        for container in list(self.started):
            self._remove(container)


def parse_json(output: str, what: str) -> Any:
    """The JSON object `output` holds (the check code prints exactly one)."""
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise AssertionError(f"{what} printed no JSON:\n{output[-3000:]}") from None


def exec_json(container: Container, command: list[str], user: str | None = None,
              environment: dict[str, str] | None = None) -> Any:
    """Run a command in a running container and parse its JSON output."""
    result = container.exec_run(command, user=user or "", environment=environment, demux=True)
    out = (result.output[0] or b"").decode(errors="replace")
    assert result.exit_code == 0, f"{command} exited {result.exit_code}:\n{out[-3000:]}"
    return parse_json(out, " ".join(command))

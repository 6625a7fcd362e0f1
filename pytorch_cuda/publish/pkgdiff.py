"""`build.py diff`: packages added, removed and changed between two images, from their records."""

from __future__ import annotations

import io
import json
import tarfile

import docker
import docker.errors

from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.progress import table

RECORD = "/usr/share/pytorch-cuda/packages.json"
KINDS = ("apt", "pip")
CHANGES = ("added", "removed", "changed")

Packages = dict[str, dict[str, str]]
Changes = dict[str, dict[str, dict]]


def read_packages(client: docker.DockerClient, ref: str) -> Packages:
    """The package record an image carries, read from a created (never started) container."""
    try:
        image = client.images.get(ref)
    except (docker.errors.ImageNotFound, docker.errors.NullResource):
        raise UserError(f"image {ref!r} is not on the engine; build or pull it, or check the name") from None
    container = client.api.create_container(image.id, command=["/nonexistent"], network_disabled=True)
    try:
        stream, _ = client.api.get_archive(container["Id"], RECORD)
        data = b"".join(stream)
    except docker.errors.NotFound:
        raise UserError(f"image {ref} carries no package record at {RECORD}") from None
    finally:
        client.api.remove_container(container["Id"], force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member else None
        raw = handle.read() if handle else b""
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), dict) for k in KINDS):
        raise UserError(f"{RECORD} in image {ref} is not a JSON object with 'apt' and 'pip' mappings")
    return {k: {str(n): str(v) for n, v in record[k].items()} for k in KINDS}


def diff(old: Packages, new: Packages) -> Changes:
    """Per kind: packages only in `new` (added), only in `old` (removed), and version changes."""
    out: Changes = {}
    for kind in KINDS:
        a, b = old.get(kind, {}), new.get(kind, {})
        out[kind] = {
            "added": {n: b[n] for n in sorted(b.keys() - a.keys())},
            "removed": {n: a[n] for n in sorted(a.keys() - b.keys())},
            "changed": {n: [a[n], b[n]] for n in sorted(a.keys() & b.keys()) if a[n] != b[n]},
        }
    return out


def rows(changes: Changes) -> list[list[str]]:
    """Table rows: kind, package, change, old version, new version."""
    out = []
    for kind in KINDS:
        section = changes.get(kind, {})
        out += [[kind, n, "added", "-", v] for n, v in section.get("added", {}).items()]
        out += [[kind, n, "removed", v, "-"] for n, v in section.get("removed", {}).items()]
        out += [[kind, n, "changed", a, b] for n, (a, b) in section.get("changed", {}).items()]
    return out


def summary(changes: Changes) -> str:
    """'apt: 1 added, 0 removed, 2 changed; pip: ...'."""
    return "; ".join(
        f"{kind}: " + ", ".join(f"{len(changes.get(kind, {}).get(c, {}))} {c}" for c in CHANGES)
        for kind in KINDS)


def show(client: docker.DockerClient, ref_a: str, ref_b: str, as_json: bool) -> int:
    """Print the package differences from image A to image B (a table, or JSON)."""
    changes = diff(read_packages(client, ref_a), read_packages(client, ref_b))
    if as_json:
        print(json.dumps({"a": ref_a, "b": ref_b, "changes": changes}, indent=2, sort_keys=True))
        return 0
    found = rows(changes)
    if found:
        print(table(["kind", "package", "change", ref_a, ref_b], found))
    print(summary(changes) if found else f"no package differences between {ref_a} and {ref_b}")
    return 0

"""Rebuilding a raw image's config from the engine's inspect and history (no Docker: a fake
engine answers with the shapes engine 20.10 gives)."""

from __future__ import annotations

import hashlib
import json
import tarfile

import docker.errors

from pytorch_cuda.repro import known
from pytorch_cuda.repro.chains import chain_ids
from pytorch_cuda.repro.layercache import LayerCache
from pytorch_cuda.repro.config import normalize_config

BASE = "sha256:" + "b" * 64


class FakeAPI:
    """inspect_image and history of a raw build and of the images its steps left."""

    def __init__(self, images: dict[str, list[str]], history: list[dict], attrs: dict) -> None:
        self.images, self._history, self.attrs = images, history, attrs

    def inspect_image(self, image_id: str) -> dict:
        if image_id not in self.images:
            raise docker.errors.NotFound(image_id)
        return {**self.attrs, "RootFS": {"Type": "layers", "Layers": self.images[image_id]}}

    def history(self, image_id: str) -> list[dict]:
        return self._history


class FakeClient:
    def __init__(self, api: FakeAPI) -> None:
        self.api = api


ATTRS = {"Architecture": "amd64", "Os": "linux", "Author": "", "Config": {"Env": ["A=1"]}}


def _item(image_id: str, created_by: str, size: int) -> dict:
    return {"Id": image_id, "CreatedBy": created_by, "Size": size, "Created": 1, "Comment": "",
            "Tags": None}


def _client(images: dict[str, list[str]], steps: list[dict]) -> FakeClient:
    return FakeClient(FakeAPI(images, list(reversed(steps)), ATTRS))


def test_empty_steps_come_from_the_images_the_steps_left():
    layers = ["sha256:l1", "sha256:l2", "sha256:l3"]
    images = {BASE: layers[:1], "sha256:s1": layers[:1], "sha256:s2": layers[:2],
              "sha256:s3": layers[:3], "sha256:top": layers[:3]}
    steps = [_item(BASE, "mmdebstrap", 100), _item("sha256:s1", "ENV A=1", 0),
             # a layer of metadata only: the engine reports 0 bytes, yet it is a layer
             _item("sha256:s2", "RUN chmod", 0), _item("sha256:s3", "COPY x", 5),
             _item("sha256:top", "LABEL x=y", 0)]
    config = known.raw_config(_client(images, steps), "sha256:top")
    assert config is not None
    assert [bool(h.get("empty_layer")) for h in config["history"]] == [
        False, True, False, False, True]
    assert config["rootfs"]["diff_ids"] == layers
    assert config["config"] == {"Env": ["A=1"]} and "author" not in config


def test_steps_of_a_loaded_image_fall_back_on_their_size():
    layers = ["sha256:l1", "sha256:l2"]
    images = {"sha256:top": layers}
    steps = [_item("<missing>", "base", 10), _item("<missing>", "ENV", 0),
             _item("sha256:top", "RUN x", 3)]
    config = known.raw_config(_client(images, steps), "sha256:top")
    assert config is not None
    assert [bool(h.get("empty_layer")) for h in config["history"]] == [False, True, False]


def test_a_history_that_does_not_add_up_is_not_guessed():
    layers = ["sha256:l1", "sha256:l2", "sha256:l3"]
    images = {"sha256:top": layers}
    steps = [_item("<missing>", "base", 10), _item("<missing>", "RUN chmod", 0),
             _item("sha256:top", "RUN x", 3)]
    assert known.raw_config(_client(images, steps), "sha256:top") is None


def test_the_rebuilt_config_normalizes_like_the_saved_one():
    saved = {"architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"], "Hostname": "h"},
             "container": "c", "docker_version": "20.10", "created": "2026-01-01T00:00:00Z",
             "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "base"},
                         {"created": "2026-01-02T00:00:00Z", "created_by": "ENV A=1",
                          "empty_layer": True}],
             "rootfs": {"type": "layers", "diff_ids": ["sha256:l1"]}}
    images = {"sha256:top": ["sha256:l1"], BASE: ["sha256:l1"]}
    steps = [_item(BASE, "base", 10), _item("sha256:top", "ENV A=1", 0)]
    api = FakeAPI(images, list(reversed(steps)), {**ATTRS, "Config": saved["config"]})
    rebuilt = known.normalized_config(FakeClient(api), "sha256:top", ["sha256:n1"], 7)
    assert rebuilt == normalize_config(saved, ["sha256:n1"], 7)
    assert json.loads(rebuilt)["created"] == "1970-01-01T00:00:07Z"


def test_a_mismatch_turns_the_save_free_path_off(tmp_path, monkeypatch):
    """A full normalization whose config differs from the rebuilt one leaves a marker (what
    differed) and from then on every build is saved and normalized in full."""
    images = {"sha256:top": ["sha256:l1"], BASE: ["sha256:l1"]}
    steps = [_item(BASE, "base", 10), _item("sha256:top", "ENV A=1", 0)]
    client = _client(images, steps)
    client.version = lambda: {"Version": "test"}  # type: ignore[attr-defined]
    monkeypatch.setattr(known, "say", lambda message: None)
    written = known.normalized_config(client, "sha256:top", ["sha256:n1"], 7)
    assert written is not None
    result = type("Result", (), {"diff_ids": ("sha256:n1",), "config": written})()
    known.check(client, tmp_path, {"sha256:top": result}, 7)
    assert not list(tmp_path.iterdir())
    known.check(client, tmp_path, {"sha256:top": type(
        "Result", (), {"diff_ids": ("sha256:n1",), "config": written + b" "})()}, 7)
    marker = json.loads((tmp_path / "known-config-mismatch.json").read_text())
    assert marker["engine"] == "test" and marker["raw"] == "sha256:top"
    assert known.write_known(client, {"sha256:top": "x"}, tmp_path / "out.tar", 7, 0,
                             tmp_path / "cache", set(), tmp_path) == {}
    assert not (tmp_path / "out.tar").exists()


def test_known_layers_give_an_archive_of_placeholders_and_the_config(tmp_path):
    """Every raw layer in the cache and every normalized chain present: one small archive with
    an empty placeholder per layer and the rebuilt config; a layer not in the cache: nothing."""
    images = {"sha256:top": ["sha256:r1", "sha256:r2"], BASE: ["sha256:r1"]}
    steps = [_item(BASE, "base", 10), _item("sha256:top", "RUN x", 5)]
    client = _client(images, steps)
    cache = LayerCache(tmp_path / "cache")
    cache.record({LayerCache.key("sha256:r1", 7, 0): ("sha256:n1", 10),
                  LayerCache.key("sha256:r2", 7, 0): ("sha256:n2", 20)}, {})
    chains = chain_ids(["sha256:n1", "sha256:n2"])
    out = tmp_path / "known.tar"
    assert known.write_known(client, {"sha256:top": "x"}, out, 7, 0, tmp_path / "cache",
                             set(chains[:1]), tmp_path) == {}  # a chain the engine lacks
    (result,) = known.write_known(client, {"sha256:top": "x"}, out, 7, 0, tmp_path / "cache",
                                  set(chains), tmp_path).values()
    assert result.diff_ids == ("sha256:n1", "sha256:n2")
    assert [layer.action for layer in result.layers] == ["present", "present"]
    with tarfile.open(out) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        config = tar.extractfile(manifest[0]["Config"]).read()
        assert all(tar.getmember(path).size == 0 for path in manifest[0]["Layers"])
    assert config == result.config
    assert manifest[0]["Config"].endswith(hashlib.sha256(config).hexdigest())
    assert json.loads(config)["rootfs"]["diff_ids"] == ["sha256:n1", "sha256:n2"]
    other = {"sha256:top": ["sha256:r1", "sha256:r3"], BASE: ["sha256:r1"]}
    assert known.write_known(_client(other, steps), {"sha256:top": "x"}, out, 7, 0,
                             tmp_path / "cache", set(chains), tmp_path) == {}

"""Rebuilding a raw image's config from the engine's inspect and history (no Docker: a fake
engine answers with the shapes engine 20.10 gives)."""

from __future__ import annotations

import json

import docker.errors

from pytorch_cuda.repro import known
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

"""A TorchScript model repository for the model server, with reference outputs.

``write(outdir)`` fills ``outdir`` with ``controlflow/`` (versions 1 and 2),
``smallconv/`` (version 1) and returns the reference: for each model its
default version and cases of inputs with the outputs the eager (unscripted)
module gave. ``broken=True`` adds two models that fail to load:
``broken_corrupt`` (model.pt is not a TorchScript archive) and
``broken_customop`` (uses a custom operator whose library is not shipped).
``write_batching(outdir)`` writes the conv net three times: unbatched, with
dynamic batching, and with a bad batching setting.
Used by ``tests/integration/make_models.py`` and the GPU proof.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .models import ControlFlow, SmallConv, UsesCustomOp

REFERENCE_FILE = "reference.json"


def tensor_json(name: str, value: torch.Tensor) -> dict[str, Any]:
    """A KServe v2 JSON tensor with flat data."""
    datatype = {torch.float32: "FP32"}[value.dtype]
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(value.shape),
        "data": value.reshape(-1).tolist(),
    }


def write_config(root: Path, name: str, config: dict[str, Any]) -> Path:
    """Write ``root/name/config.json``; return the model's folder."""
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return model_dir


def write_model(
    root: Path, name: str, version: int, module: torch.nn.Module, config: dict[str, Any]
) -> None:
    """Script ``module`` into ``root/name/version/model.pt`` and write config.json."""
    model_dir = write_config(root, name, config)
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    torch.jit.script(module.eval()).save(str(model_dir / str(version) / "model.pt"))


def spec(name: str, shape: list[int]) -> dict[str, Any]:
    """An FP32 tensor spec of config.json."""
    return {"name": name, "datatype": "FP32", "shape": shape}


def case(
    name: str, version: int, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """One reference case: a version, its inputs and the expected outputs."""
    return {
        "name": name,
        "version": str(version),
        "inputs": [tensor_json(k, v) for k, v in inputs.items()],
        "outputs": [tensor_json(k, v) for k, v in outputs.items()],
    }


def make_controlflow(root: Path) -> dict[str, Any]:
    """Two versions (seeds 1 and 2); each input takes a different branch."""
    config = {"inputs": [spec("input", [-1, 4])], "outputs": [spec("output", [-1, 4])]}
    positive = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.25, 1.5, -0.75, 2.0]])
    negative = -positive
    cases = []
    for version in (1, 2):
        torch.manual_seed(version)
        module = ControlFlow(features=4).eval()
        with torch.no_grad():
            pos, neg = module(positive), module(negative)
            linear = module.linear(positive)
        # The two inputs must really take different branches.
        if not (bool((linear < 0).any()) and bool((pos >= 0).all())):
            raise RuntimeError("controlflow reference leaves the ReLU branch untested")
        if not bool((neg < 0).any()):
            raise RuntimeError("controlflow reference leaves the plain branch untested")
        write_model(root, "controlflow", version, module, config)
        cases.append(case("relu_branch", version, {"input": positive}, {"output": pos}))
        cases.append(case("plain_branch", version, {"input": negative}, {"output": neg}))
    return {"default_version": "2", "cases": cases}


def make_smallconv(root: Path) -> dict[str, Any]:
    """One version of the conv net, one batch of two images."""
    config = {
        "inputs": [spec("image", [-1, 3, 16, 16])],
        "outputs": [spec("logits", [-1, 10])],
    }
    torch.manual_seed(3)
    module = SmallConv().eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        logits = module(images)
    write_model(root, "smallconv", 1, module, config)
    cases = [case("batch2", 1, {"image": images}, {"logits": logits})]
    return {"default_version": "1", "cases": cases}


def make_broken(root: Path) -> None:
    """``broken_corrupt`` and ``broken_customop``: two models that fail to load."""
    config = {"inputs": [spec("input", [-1, 4])], "outputs": [spec("output", [-1, 4])]}
    corrupt = write_config(root, "broken_corrupt", config)
    (corrupt / "1").mkdir(parents=True, exist_ok=True)
    (corrupt / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive\n")

    library = torch.library.Library("ptserve_test", "DEF")
    library.define("scale2(Tensor x) -> Tensor")
    library.impl("scale2", lambda x: x * 2, "CompositeExplicitAutograd")
    write_model(root, "broken_customop", 1, UsesCustomOp(), config)


def write(outdir: Path, broken: bool = False) -> dict[str, Any]:
    """Write the repository and ``reference.json`` into ``outdir``; return the reference."""
    outdir.mkdir(parents=True, exist_ok=True)
    reference = {"controlflow": make_controlflow(outdir), "smallconv": make_smallconv(outdir)}
    if broken:
        make_broken(outdir)
    (outdir / REFERENCE_FILE).write_text(json.dumps(reference) + "\n")
    return reference


BATCHING = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 5000}}


def write_batching(outdir: Path) -> list[str]:
    """The conv net as ``plain`` (no batching), ``batched`` (max_batch_size 8, 5 ms queue
    delay) and ``badbatch`` (a delay that is not a number); the names written."""
    io = {"inputs": [spec("image", [-1, 3, 16, 16])], "outputs": [spec("logits", [-1, 10])]}
    configs = {
        "plain": io,
        "batched": {**io, **BATCHING},
        "badbatch": {**io, "max_batch_size": 8,
                     "dynamic_batching": {"max_queue_delay_microseconds": "soon"}},
    }
    torch.manual_seed(0)
    module = SmallConv()
    for name, config in configs.items():
        write_model(outdir, name, 1, module, config)
    return sorted(configs)

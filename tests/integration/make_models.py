#!/usr/bin/env python3
"""Write a TorchScript model repository and reference outputs for the model-server tests.

Usage: python make_models.py OUTDIR [--broken]

OUTDIR gets ``controlflow/`` (versions 1 and 2), ``smallconv/`` (version 1) and
``reference.json``: for each model, its default version and cases of inputs with
the outputs the eager (unscripted) module gave. ``--broken`` adds two models
that fail to load: ``broken_corrupt`` (model.pt is not a TorchScript archive)
and ``broken_customop`` (uses a custom operator whose library is not shipped).
Needs only the standard library and torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


class ControlFlow(torch.nn.Module):
    """Linear(4, 4), then ReLU only when the whole input sums to a positive number."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if bool(x.sum() > 0):
            y = torch.relu(y)
        return y


class SmallConv(torch.nn.Module):
    """Two 3x3 convolutions, pooling and a linear classifier over 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class UsesCustomOp(torch.nn.Module):
    """Calls ptserve_test::scale2, an operator only this script defines."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.ptserve_test.scale2(x)


def tensor_json(name: str, value: torch.Tensor) -> dict:
    """A KServe v2 JSON tensor with flat data."""
    datatype = {torch.float32: "FP32"}[value.dtype]
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(value.shape),
        "data": value.reshape(-1).tolist(),
    }


def write_model(root: Path, name: str, version: int, module: torch.nn.Module, config: dict) -> None:
    """Script ``module`` into ``root/name/version/model.pt`` and write config.json."""
    model_dir = root / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.jit.script(module.eval()).save(str(model_dir / str(version) / "model.pt"))


def spec(name: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": "FP32", "shape": shape}


def case(name: str, version: int, inp: str, x: torch.Tensor, out: str, y: torch.Tensor) -> dict:
    return {
        "name": name,
        "version": str(version),
        "inputs": [tensor_json(inp, x)],
        "outputs": [tensor_json(out, y)],
    }


def make_controlflow(root: Path) -> dict:
    config = {"inputs": [spec("input", [-1, 4])], "outputs": [spec("output", [-1, 4])]}
    positive = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.25, 1.5, -0.75, 2.0]])
    negative = -positive
    cases = []
    for version in (1, 2):
        torch.manual_seed(version)
        module = ControlFlow().eval()
        with torch.no_grad():
            pos, neg = module(positive), module(negative)
            linear = module.linear(positive)
        # The two inputs must really take different branches.
        assert bool((linear < 0).any()) and bool((pos >= 0).all()), "ReLU branch untested"
        assert bool((neg < 0).any()), "no-ReLU branch untested"
        write_model(root, "controlflow", version, module, config)
        cases.append(case("relu_branch", version, "input", positive, "output", pos))
        cases.append(case("plain_branch", version, "input", negative, "output", neg))
    return {"default_version": "2", "cases": cases}


def make_smallconv(root: Path) -> dict:
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
    return {"default_version": "1", "cases": [case("batch2", 1, "image", images, "logits", logits)]}


def make_broken(root: Path) -> None:
    config = {"inputs": [spec("input", [-1, 4])], "outputs": [spec("output", [-1, 4])]}
    corrupt = root / "broken_corrupt"
    (corrupt / "1").mkdir(parents=True, exist_ok=True)
    (corrupt / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (corrupt / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive\n")

    library = torch.library.Library("ptserve_test", "DEF")
    library.define("scale2(Tensor x) -> Tensor")
    library.impl("scale2", lambda x: x * 2, "CompositeExplicitAutograd")
    write_model(root, "broken_customop", 1, UsesCustomOp(), config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--broken", action="store_true", help="also write models that fail to load")
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    reference = {
        "controlflow": make_controlflow(args.outdir),
        "smallconv": make_smallconv(args.outdir),
    }
    if args.broken:
        make_broken(args.outdir)
    (args.outdir / "reference.json").write_text(json.dumps(reference) + "\n")
    print(f"wrote {', '.join(sorted(reference))} and reference.json to {args.outdir}")


if __name__ == "__main__":
    main()

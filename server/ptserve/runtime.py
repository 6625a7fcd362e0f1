"""Loading TorchScript models onto the device and running inference requests."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptserve import logs
from ptserve.codec import encode_infer_response, parse_infer_request
from ptserve.errors import ApiError
from ptserve.modelconfig import ModelConfig
from ptserve.repository import ModelVersion, Repository, State
from ptserve.tensors import from_torch, to_torch

GPU_REQUIRED = (
    "PTSERVE_REQUIRE_GPU=1 but no CUDA device is visible "
    "(torch.cuda.is_available() is False), so no model was loaded"
)


def summarize(exc: BaseException, last: bool = False) -> str:
    """The first sentence of the first (or last) line of an exception message.

    TorchScript errors span many lines: the cause is on the first line of a
    load error and on the last line of an interpreter (inference) error.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return re.split(r"(?<=\.)\s", lines[-1] if last else lines[0], maxsplit=1)[0]


@dataclass(frozen=True)
class InferReply:
    """An encoded inference answer and the time the model itself took."""

    body: bytes
    header_length: int | None
    inference_seconds: float


class Runtime:
    """Holds the device; loads model versions and runs them.

    ``blocked`` is why nothing may load at all (a required GPU is missing).
    """

    def __init__(self, device: torch.device, blocked: str = "") -> None:
        self.device = device
        self.blocked = blocked
        self._libraries: set[Path] = set()

    @classmethod
    def create(cls, require_gpu: bool, allow_tf32: bool = False) -> Runtime:
        """CUDA device 0 when visible, else the CPU unless a GPU is required.

        TF32 matmuls and convolutions stay off unless ``allow_tf32``, so FP32
        models give FP32-accurate results on the GPU too.
        """
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        if torch.cuda.is_available():
            return cls(torch.device("cuda", 0))
        return cls(torch.device("cpu"), GPU_REQUIRED if require_gpu else "")

    def load_all(self, repository: Repository) -> None:
        """Load every version still LOADING; failures only mark that version."""
        pending = [v for v in repository.versions() if v.state is State.LOADING]
        if self.blocked:
            logs.error("gpu_required", reason=self.blocked)
            for version in pending:
                version.set_unavailable(self.blocked)
            return
        for version in pending:
            self.load(version)
        reason = repository.not_ready_reason()
        logs.log(
            logging.WARNING if reason else logging.INFO,
            "repository_loaded",
            ready=not reason,
            reason=reason,
            models=sorted(repository.models),
        )

    def _load_libraries(self, version: ModelVersion) -> None:
        for library in version.libraries:
            if library in self._libraries:
                continue
            try:
                torch.ops.load_library(str(library))
            except Exception as exc:
                raise RuntimeError(
                    f"cannot load custom-operator library {library.name}: {summarize(exc)}"
                ) from exc
            self._libraries.add(library)
            logs.info("library_loaded", model=version.model, library=str(library))

    def load(self, version: ModelVersion) -> None:
        """Load custom-op libraries, then model.pt; record READY or the reason it failed."""
        started = time.perf_counter()
        try:
            self._load_libraries(version)
            if not version.model_file.is_file():
                raise RuntimeError(f"{version.model_file} does not exist")
            module = torch.jit.load(str(version.model_file), map_location=self.device)
            module.eval()
        except Exception as exc:  # noqa: BLE001 - a bad model must not stop the server
            reason = f"failed to load: {summarize(exc)}"
            version.set_unavailable(reason)
            logs.error(
                "model_load_failed",
                model=version.model,
                version=version.version,
                reason=reason,
                detail=str(exc),
            )
            return
        version.set_ready(module)
        logs.info(
            "model_loaded",
            model=version.model,
            version=version.version,
            device=str(self.device),
            seconds=round(time.perf_counter() - started, 3),
        )

    def gpu_memory(self) -> list[tuple[int, int]]:
        """(device index, bytes allocated by tensors) for each visible GPU."""
        if not torch.cuda.is_available():
            return []
        return [(i, torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count())]

    def infer(
        self,
        model: str,
        config: ModelConfig,
        version: ModelVersion,
        body: bytes,
        header_length: str | None,
    ) -> InferReply:
        """Decode, validate, run and encode one request (called in a worker thread)."""
        request = parse_infer_request(config, body, header_length)
        args = [to_torch(tensor, self.device) for tensor in request.inputs]
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                named = _named_outputs(version.module(*args), config, model)
                results = {name: value.detach().cpu() for name, value in named.items()}
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - any model error becomes a 500 answer
            logs.error("inference_failed", model=model, version=version.version, detail=str(exc))
            raise ApiError(
                500, f"inference failed for model '{model}': {summarize(exc, last=True)}"
            ) from None
        seconds = time.perf_counter() - started
        outputs = [from_torch(results[r.spec.name], r) for r in request.outputs]
        reply_body, length = encode_infer_response(model, version.version, request.id, outputs)
        return InferReply(reply_body, length, seconds)


def _named_outputs(result: Any, config: ModelConfig, model: str) -> dict[str, torch.Tensor]:
    """Match what ``forward`` returned (tensor, tuple/list or dict) to config outputs."""
    names = [spec.name for spec in config.outputs]
    if isinstance(result, dict):
        values = [result.get(name) for name in names]
    elif isinstance(result, (tuple, list)) and len(result) == len(names):
        values = list(result)
    elif isinstance(result, torch.Tensor) and len(names) == 1:
        values = [result]
    else:
        values = []
    if len(values) != len(names) or not all(isinstance(v, torch.Tensor) for v in values):
        raise ApiError(
            500,
            f"model '{model}' returned {type(result).__name__}, which does not match "
            f"the outputs {names} in config.json",
        )
    return dict(zip(names, values))

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
from ptserve.codec import InferRequest, encode_infer_response, parse_infer_request
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
class GpuStats:
    """One GPU as /metrics reports it; ``used_bytes`` counts every process on it."""

    device: int
    allocated_bytes: int
    reserved_bytes: int
    used_bytes: int
    total_bytes: int
    utilization_percent: float | None


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
        self._nvml_missing = False

    @classmethod
    def create(cls, require_gpu: bool, allow_tf32: bool = False,
               torch_threads: int | None = None) -> Runtime:
        """CUDA device 0 when visible, else the CPU unless a GPU is required.

        TF32 matmuls and convolutions stay off unless ``allow_tf32``, so FP32
        models give FP32-accurate results on the GPU too. ``torch_threads`` sets
        torch's intra-op threads: the worker threads already run inferences side
        by side, so each gets its share of the CPUs instead of all of them.
        """
        if torch_threads:
            torch.set_num_threads(torch_threads)
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

    def gpu_stats(self) -> list[GpuStats]:
        """Memory and, where NVML answers, utilization of each visible GPU."""
        if not torch.cuda.is_available():
            return []
        stats = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            stats.append(GpuStats(
                device=index,
                allocated_bytes=torch.cuda.memory_allocated(index),
                reserved_bytes=torch.cuda.memory_reserved(index),
                used_bytes=total - free,
                total_bytes=total,
                utilization_percent=self._utilization(index),
            ))
        return stats

    def _utilization(self, index: int) -> float | None:
        """GPU busy percentage from NVML; None (and never asked again) without pynvml."""
        if self._nvml_missing:
            return None
        try:
            return float(torch.cuda.utilization(index))
        except Exception:  # noqa: BLE001 - pynvml is optional; omit the figure without it
            self._nvml_missing = True
            return None

    def prepare(
        self, config: ModelConfig, body: bytes, header_length: str | None
    ) -> tuple[InferRequest, list[torch.Tensor]]:
        """Decode and validate a request; its input tensors on the device."""
        request = parse_infer_request(config, body, header_length)
        return request, [to_torch(tensor, self.device) for tensor in request.inputs]

    def forward(
        self, model: str, config: ModelConfig, version: ModelVersion, args: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Run the model once; its outputs on the CPU by name, and the seconds it took."""
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
        return results, time.perf_counter() - started

    def forward_batch(
        self,
        model: str,
        config: ModelConfig,
        version: ModelVersion,
        batch: list[list[torch.Tensor]],
    ) -> tuple[list[dict[str, torch.Tensor]], float]:
        """Run requests as one batch (inputs joined along dim 0); each request's outputs."""
        sizes = [args[0].shape[0] for args in batch]
        joined = [torch.cat(column) if len(batch) > 1 else column[0] for column in zip(*batch)]
        results, seconds = self.forward(model, config, version, joined)
        total = sum(sizes)
        for name, value in results.items():
            if value.dim() == 0 or value.shape[0] != total:
                raise ApiError(
                    500,
                    f"model '{model}' output '{name}' has shape {list(value.shape)}, whose first "
                    f"dimension is not the batch size {total}, so it cannot be split "
                    "between requests (max_batch_size in config.json)",
                )
        split = {name: value.split(sizes) for name, value in results.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(sizes))], seconds

    def encode(
        self,
        model: str,
        version: ModelVersion,
        request: InferRequest,
        results: dict[str, torch.Tensor],
        seconds: float,
    ) -> InferReply:
        """The answer to ``request`` from the model's outputs."""
        outputs = [from_torch(results[r.spec.name], r) for r in request.outputs]
        reply_body, length = encode_infer_response(model, version.version, request.id, outputs)
        return InferReply(reply_body, length, seconds)

    def infer(
        self,
        model: str,
        config: ModelConfig,
        version: ModelVersion,
        body: bytes,
        header_length: str | None,
    ) -> InferReply:
        """Decode, validate, run and encode one request (called in a worker thread)."""
        request, args = self.prepare(config, body, header_length)
        results, seconds = self.forward(model, config, version, args)
        return self.encode(model, version, request, results, seconds)


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

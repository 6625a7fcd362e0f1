"""Facts about the running Python/torch stack, and comparison against expected pins.

torch is imported lazily inside :func:`collect`, so the pure helpers
(arch-list normalisation, pin comparison) work on a Python without torch.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

NVIDIA_ENV = (
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "NVIDIA_REQUIRE_CUDA",
)
OPTIONAL_DISTRIBUTIONS = ("torchvision", "torchaudio", "triton")
SCAN_SKIP = ("/proc", "/sys", "/dev")
LIBCUDA_PATTERN = "libcuda.so*"
OS_RELEASE_FILES = ("/etc/os-release", "/usr/lib/os-release")
# Pins reported (expected null) by ``all`` when no expectation file is given.
REPORTED_PINS = (
    "python",
    "torch",
    "cuda",
    "cudnn",
    "nccl",
    "arch_list",
    *OPTIONAL_DISTRIBUTIONS,
)

_ARCH_FLAG = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")


# ---------------------------------------------------------------- pure helpers


def normalize_name(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def normalize_arch_flags(flags: str | Iterable[str] | None) -> list[str]:
    """Split torch's compiled arch flags ("sm_70 sm_75 compute_90") into a list.

    Unknown tokens are dropped; order is kept, duplicates removed.
    """
    if flags is None:
        return []
    tokens = re.split(r"[\s;,]+", flags) if isinstance(flags, str) else list(flags)
    result: list[str] = []
    for token in (t.strip().lower() for t in tokens):
        if _ARCH_FLAG.match(token) and token not in result:
            result.append(token)
    return result


def _arch_number(digits: str, suffix: str) -> str:
    """``"90", "a"`` -> ``"9.0a"``; ``"100", ""`` -> ``"10.0"``."""
    return f"{int(digits[:-1] or 0)}.{digits[-1]}{suffix}"


def _arch_sort_key(entry: str) -> tuple[int, int, str]:
    major, _, rest = entry.partition(".")
    return int(major), int(rest[0]), rest[1:]


def arch_flags_to_list(flags: str | Iterable[str] | None) -> str:
    """Arch flags in TORCH_CUDA_ARCH_LIST form: sm_XY -> "X.Y", compute_XY -> "X.Y+PTX"."""
    archs: dict[str, bool] = {}
    matches = (_ARCH_FLAG.match(flag) for flag in normalize_arch_flags(flags))
    for kind, digits, suffix in (m.groups() for m in matches if m):
        number = _arch_number(digits, suffix)
        archs[number] = archs.get(number, False) or kind == "compute"
    ordered = sorted(archs, key=_arch_sort_key)
    return ";".join(f"{a}+PTX" if archs[a] else a for a in ordered)


def parse_arch_list(arch_list: str | None) -> set[str]:
    """Tokens of a TORCH_CUDA_ARCH_LIST string ("7.0;8.6 9.0+ptx"), canonical case."""
    if not arch_list:
        return set()
    return {
        t.replace("+ptx", "+PTX")
        for t in re.split(r"[\s;,]+", arch_list.strip().lower())
        if t
    }


def version_matches(expected: object, actual: object) -> bool:
    """Equal, or ``expected`` is a dotted prefix of ``actual`` ("3.11" matches "3.11.9")."""
    if actual is None:
        return False
    expected_text, actual_text = str(expected), str(actual)
    return actual_text == expected_text or actual_text.startswith(expected_text + ".")


def _int_matches(expected: object, actual: object) -> bool:
    try:
        return actual is not None and int(str(expected)) == int(str(actual))
    except ValueError:
        return False


def _arch_matches(expected: object, actual: object) -> bool:
    return actual is not None and parse_arch_list(str(expected)) == parse_arch_list(
        str(actual)
    )


def _os_field(key: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda facts: (facts.get("os") or {}).get(key)


_PIN_ACTUAL: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    **{key: (lambda facts, key=key: facts.get(key)) for key in REPORTED_PINS},
    "os_id": _os_field("id"),
    "os_version_id": _os_field("version_id"),
    "os_codename": _os_field("version_codename"),
}
_PIN_MATCH: dict[str, Callable[[object, object], bool]] = {
    "cudnn": _int_matches,
    "arch_list": _arch_matches,
}


def pin_result(
    name: str, expected: object, actual: object, passed: bool | None
) -> dict[str, Any]:
    """One pin record: {name, expected, actual, passed}."""
    return {"name": name, "expected": expected, "actual": actual, "passed": passed}


def _package_pins(expected: object, facts: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(expected, Mapping):
        return [pin_result("packages", expected, None, False)]
    installed = facts.get("packages") or {}
    results = []
    for name, version in sorted(expected.items()):
        actual = installed.get(normalize_name(name))
        results.append(
            pin_result(
                f"packages.{normalize_name(name)}",
                version,
                actual,
                version_matches(version, actual),
            )
        )
    return results


def compare_pins(
    expect: Mapping[str, Any], facts: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Compare expected pins with collected facts; unknown pin names fail."""
    results: list[dict[str, Any]] = []
    for name, expected in expect.items():
        if name == "packages":
            results.extend(_package_pins(expected, facts))
        elif name in _PIN_ACTUAL:
            actual = _PIN_ACTUAL[name](facts)
            results.append(
                pin_result(
                    name,
                    expected,
                    actual,
                    _PIN_MATCH.get(name, version_matches)(expected, actual),
                )
            )
        else:
            results.append(pin_result(name, expected, "unknown pin name", False))
    return results


def report_pins(facts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The standard pins with their actual values only (expected and passed are null)."""
    return [pin_result(name, None, facts.get(name), None) for name in REPORTED_PINS]


def pins_ok(pins: Iterable[Mapping[str, Any]]) -> bool:
    """False when any compared pin failed (report-only pins, passed null, are ignored)."""
    return all(p["passed"] is not False for p in pins)


def load_expect(path: str | Path) -> dict[str, Any]:
    """Read a JSON file of pins: ValueError if unreadable, TypeError if not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read expectation file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TypeError(f"expectation file {path} must hold a JSON object")
    return data


def parse_os_release(text: str) -> dict[str, str | None]:
    """ID, VERSION_ID and VERSION_CODENAME from os-release text."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if sep and not key.startswith("#"):
            parsed = shlex.split(raw, comments=False)
            values[key.strip()] = parsed[0] if parsed else ""
    return {
        "id": values.get("ID"),
        "version_id": values.get("VERSION_ID"),
        "version_codename": values.get("VERSION_CODENAME"),
    }


def format_nccl_version(version: object) -> str:
    """``(2, 27, 3)`` -> ``"2.27.3"``."""
    if isinstance(version, (tuple, list)):
        return ".".join(str(part) for part in version)
    return str(version)


# ----------------------------------------------------------------- collection


def find_libcuda(root: str = "/") -> list[str]:
    """Paths of ``libcuda.so*`` files (or links) under ``root``, skipping /proc, /sys, /dev."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in SCAN_SKIP]
        found.extend(
            os.path.join(dirpath, f)
            for f in filenames
            if fnmatch.fnmatch(f, LIBCUDA_PATTERN)
        )
    return sorted(found)


def installed_distributions() -> dict[str, str]:
    """All installed distributions as {normalised name: version}; first on sys.path wins."""
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.setdefault(normalize_name(name), dist.version)
    return dict(sorted(packages.items()))


def distribution_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_os_release() -> dict[str, str | None]:
    """Parsed /etc/os-release (or /usr/lib/os-release); null fields when absent."""
    for candidate in OS_RELEASE_FILES:
        if os.path.exists(candidate):
            return parse_os_release(Path(candidate).read_text(encoding="utf-8"))
    return parse_os_release("")


def _fact(errors: dict[str, str], key: str, read: Callable[[], Any]) -> Any:
    """Call ``read``; on failure record the error under ``key`` and return None."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - a missing fact is reported, not raised
        errors[key] = f"{type(exc).__name__}: {exc}"
        return None


def _torch_facts(errors: dict[str, str]) -> dict[str, Any]:
    """Versions read from the imported torch; all null when torch is missing."""
    keys = (
        "torch",
        "cuda",
        "cudnn",
        "nccl",
        "arch_flags",
        "arch_list",
        "cuda_available",
    )
    try:
        import torch
    except ImportError as exc:
        errors["torch"] = f"{type(exc).__name__}: {exc}"
        return dict.fromkeys(keys)
    flags = _fact(
        errors,
        "arch_flags",
        lambda: getattr(torch._C, "_cuda_getArchFlags", lambda: None)(),
    )
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _fact(errors, "cudnn", torch.backends.cudnn.version),
        "nccl": _fact(
            errors, "nccl", lambda: format_nccl_version(torch.cuda.nccl.version())
        ),
        "arch_flags": normalize_arch_flags(flags),
        "arch_list": arch_flags_to_list(flags),
        "cuda_available": _fact(errors, "cuda_available", torch.cuda.is_available),
    }


def collect(scan_root: str = "/") -> dict[str, Any]:
    """All version facts of the running Python, as one JSON-ready dict."""
    errors: dict[str, str] = {}
    info = sys.version_info
    facts: dict[str, Any] = {
        "python": f"{info.major}.{info.minor}.{info.micro}",
        "python_executable": sys.executable,
    }
    facts.update(_torch_facts(errors))
    facts.update({name: distribution_version(name) for name in OPTIONAL_DISTRIBUTIONS})
    facts["os"] = _fact(errors, "os", read_os_release)
    facts["env"] = {name: os.environ.get(name) for name in NVIDIA_ENV}
    facts["packages"] = _fact(errors, "packages", installed_distributions)
    facts["libcuda_scan_root"] = scan_root
    facts["libcuda"] = _fact(errors, "libcuda", lambda: find_libcuda(scan_root))
    facts["errors"] = errors
    return facts

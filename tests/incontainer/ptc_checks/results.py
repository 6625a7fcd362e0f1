"""Check records shared by all commands: plain dicts that serialise to JSON."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

Check = dict[str, Any]


def json_float(value: float) -> float | str:
    """Return ``value`` unchanged when finite, else its text (JSON has no NaN/inf)."""
    return value if math.isfinite(value) else str(value)


def check(name: str, passed: bool, detail: str, **extra: Any) -> Check:
    """Build one check record: name, passed, detail plus optional structured fields."""
    return {"name": name, "passed": bool(passed), "detail": detail, **extra}


def _max_abs_diff(expected: Any, actual: Any) -> float:
    """Largest absolute element difference of two tensors, compared in float64 on CPU."""
    if expected.numel() == 0:
        return 0.0
    return float(
        (actual.detach().double().cpu() - expected.detach().double().cpu()).abs().max()
    )


def _within(expected: Any, actual: Any, rtol: float, atol: float) -> bool:
    """``torch.allclose`` semantics, evaluated in float64 on CPU (NaN never matches)."""
    exp = expected.detach().double().cpu()
    act = actual.detach().double().cpu()
    return bool(((act - exp).abs() <= atol + rtol * exp.abs()).all())


def close_check(
    name: str, expected: Any, actual: Any, *, rtol: float, atol: float
) -> Check:
    """Check that tensor ``actual`` matches ``expected`` within rtol/atol."""
    tolerance = {"rtol": rtol, "atol": atol}
    if tuple(expected.shape) != tuple(actual.shape):
        shapes = f"expected {tuple(expected.shape)}, actual {tuple(actual.shape)}"
        detail = f"shape mismatch: {shapes}"
        return check(name, False, detail, max_abs_diff=None, **tolerance)
    diff = _max_abs_diff(expected, actual)
    passed = _within(expected, actual, rtol, atol)
    verdict = "within" if passed else "outside"
    detail = (
        f"expected vs actual: max abs diff {diff:.3g} {verdict} tolerance "
        f"rtol={rtol:g} atol={atol:g}"
    )
    return check(name, passed, detail, max_abs_diff=json_float(diff), **tolerance)


def differ_check(
    name: str, reference: Any, actual: Any, why: str, *, rtol: float, atol: float
) -> Check:
    """Check that passes when ``actual`` is NOT close to ``reference`` (pitfall shown)."""
    diff = _max_abs_diff(reference, actual)
    passed = not _within(reference, actual, rtol, atol)
    shown = "demonstrated" if passed else "NOT demonstrated"
    detail = f"{why}: {shown} (max abs diff {diff:.3g}, rtol={rtol:g} atol={atol:g})"
    return check(
        name, passed, detail, max_abs_diff=json_float(diff), rtol=rtol, atol=atol
    )


def guarded(name: str, run: Callable[[], Iterable[Check]]) -> list[Check]:
    """Run a group of checks; an exception adds one failed check named ``name``.

    Checks the group yielded before the exception are kept.
    """
    done: list[Check] = []
    try:
        done.extend(run())  # keeps the items appended before an exception
    except Exception as exc:  # noqa: BLE001 - every failure is reported, never raised
        done.append(check(name, False, f"{type(exc).__name__}: {exc}"))
    return done


def shared_tensors(reference: Any, under_test: Any) -> list[str]:
    """Names of ``under_test``'s parameters and buffers that share memory with ``reference``'s.

    Works on anything with ``named_parameters()`` and ``named_buffers()`` whose
    items have ``data_ptr()`` and ``numel()`` (empty tensors share nothing).
    """

    def pointers(module: Any) -> dict[str, int]:
        named = [*module.named_parameters(), *module.named_buffers()]
        return {name: t.data_ptr() for name, t in named if t.numel()}

    theirs = set(pointers(reference).values())
    return sorted(name for name, ptr in pointers(under_test).items() if ptr in theirs)


def all_passed(checks: Iterable[Check]) -> bool:
    """True when every check passed (and there is at least one)."""
    checks = list(checks)
    return bool(checks) and all(c["passed"] for c in checks)

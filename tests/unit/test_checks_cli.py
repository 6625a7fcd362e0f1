"""Unit tests for the in-image check package ``ptc_checks``.

The pure helpers and the CLI's JSON shape are tested without torch; tests that
need torch skip themselves when it is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ptc_checks import results, versions

INCONTAINER = Path(versions.__file__).resolve().parents[1]

CU128_FLAGS = "sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 compute_120"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ptc_checks`` the way the image tests do (package on PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(INCONTAINER)}
    return subprocess.run(
        [sys.executable, "-m", "ptc_checks", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=600,
    )


def run_json(*args: str) -> dict[str, Any]:
    """Run the CLI, require exit 0 and exactly one JSON object on stdout."""
    done = run_cli(*args)
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return json.loads(done.stdout)


# ------------------------------------------------------------- arch lists


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            CU128_FLAGS,
            [
                "sm_70",
                "sm_75",
                "sm_80",
                "sm_86",
                "sm_90",
                "sm_100",
                "sm_120",
                "compute_120",
            ],
        ),
        (["SM_90A", "sm_90a", "bogus", "compute_90"], ["sm_90a", "compute_90"]),
        ("sm_80;sm_86,sm_90", ["sm_80", "sm_86", "sm_90"]),
        ("", []),
        (None, []),
    ],
)
def test_normalize_arch_flags(flags: Any, expected: list[str]) -> None:
    assert versions.normalize_arch_flags(flags) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (CU128_FLAGS, "7.0;7.5;8.0;8.6;9.0;10.0;12.0+PTX"),
        ("compute_90 sm_90a sm_80", "8.0;9.0+PTX;9.0a"),
        ("sm_120 sm_75 sm_100", "7.5;10.0;12.0"),
        (None, ""),
    ],
)
def test_arch_flags_to_list(flags: Any, expected: str) -> None:
    assert versions.arch_flags_to_list(flags) == expected


def test_parse_arch_list_is_order_and_case_insensitive() -> None:
    assert versions.parse_arch_list("9.0+ptx 7.0;8.6") == {"7.0", "8.6", "9.0+PTX"}
    assert versions.parse_arch_list("") == set()


# ------------------------------------------------------------- pin comparison

FACTS: dict[str, Any] = {
    "python": "3.11.9",
    "torch": "2.8.0+cu128",
    "cuda": "12.8",
    "cudnn": 91002,
    "nccl": "2.27.3",
    "arch_list": "7.0;7.5;8.0;8.6;9.0;10.0;12.0",
    "torchvision": "0.23.0+cu128",
    "torchaudio": None,
    "triton": "3.4.0",
    "os": {"id": "debian", "version_id": "12", "version_codename": "bookworm"},
    "packages": {"numpy": "2.1.2", "typing-extensions": "4.12.2"},
}


def pins_by_name(expect: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {pin["name"]: pin for pin in versions.compare_pins(expect, FACTS)}


def test_matching_pins_pass() -> None:
    expect = {
        "python": "3.11",
        "torch": "2.8.0+cu128",
        "cuda": "12.8",
        "cudnn": "91002",
        "nccl": "2.27.3",
        "arch_list": "12.0;10.0;9.0;8.6;8.0;7.5;7.0",
        "os_codename": "bookworm",
        "os_id": "debian",
        "os_version_id": "12",
        "triton": "3.4.0",
    }
    pins = versions.compare_pins(expect, FACTS)
    assert [p["name"] for p in pins] == list(expect)
    assert all(p["passed"] for p in pins), pins
    assert versions.pins_ok(pins)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("python", "3.1"),
        ("torch", "2.8.0"),
        ("cudnn", 90100),
        ("cudnn", "nine"),
        ("nccl", "2.26.2"),
        ("arch_list", "7.0;7.5"),
        ("torchaudio", "2.8.0"),
        ("os_codename", "trixie"),
    ],
)
def test_mismatching_pin_fails(name: str, expected: Any) -> None:
    pin = pins_by_name({name: expected})[name]
    assert pin["passed"] is False
    assert pin["expected"] == expected


def test_package_pins_normalise_names() -> None:
    pins = pins_by_name(
        {"packages": {"Typing_Extensions": "4.12.2", "NumPy": "2.0", "missing": "1.0"}}
    )
    assert pins["packages.typing-extensions"]["passed"] is True
    assert pins["packages.numpy"] == {
        "name": "packages.numpy",
        "expected": "2.0",
        "actual": "2.1.2",
        "passed": False,
    }
    assert pins["packages.missing"]["actual"] is None
    assert pins["packages.missing"]["passed"] is False


def test_unknown_pin_and_bad_packages_fail() -> None:
    pins = pins_by_name({"pyhton": "3.11", "packages": ["numpy"]})
    assert pins["pyhton"]["passed"] is False
    assert pins["packages"]["passed"] is False


def test_report_pins_only_report() -> None:
    pins = versions.report_pins(FACTS)
    assert [p["name"] for p in pins] == list(versions.REPORTED_PINS)
    assert all(p["expected"] is None and p["passed"] is None for p in pins)
    assert {p["name"]: p["actual"] for p in pins}["cudnn"] == 91002
    assert versions.pins_ok(pins)


def test_load_expect(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"python": "3.13"}', encoding="utf-8")
    assert versions.load_expect(good) == {"python": "3.13"}
    bad = tmp_path / "bad.json"
    bad.write_text("[1]", encoding="utf-8")
    with pytest.raises(TypeError, match="JSON object"):
        versions.load_expect(bad)
    with pytest.raises(ValueError, match="cannot read"):
        versions.load_expect(tmp_path / "absent.json")


# ------------------------------------------------------------- other helpers


def test_parse_os_release() -> None:
    text = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n# x=y\n'
    assert versions.parse_os_release(text) == {
        "id": "debian",
        "version_id": "13",
        "version_codename": "trixie",
    }
    assert versions.parse_os_release("") == {
        "id": None,
        "version_id": None,
        "version_codename": None,
    }


def test_format_nccl_version() -> None:
    assert versions.format_nccl_version((2, 27, 3)) == "2.27.3"


def test_normalize_name() -> None:
    assert versions.normalize_name("Foo.Bar__baz-Qux") == "foo-bar-baz-qux"


def test_find_libcuda(tmp_path: Path) -> None:
    lib = tmp_path / "usr" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcuda.so.570.1").write_bytes(b"")
    (lib / "libcuda.so.1").symlink_to("libcuda.so.570.1")
    (lib / "libcudart.so.12").write_bytes(b"")
    assert versions.find_libcuda(str(tmp_path)) == [
        str(lib / "libcuda.so.1"),
        str(lib / "libcuda.so.570.1"),
    ]


def test_check_records() -> None:
    passed = results.check("a", True, "fine", rtol=1.0)
    assert passed == {"name": "a", "passed": True, "detail": "fine", "rtol": 1.0}
    assert results.all_passed([passed])
    assert not results.all_passed([passed, results.check("b", False, "bad")])
    assert not results.all_passed([])
    assert results.json_float(float("nan")) == "nan"


def test_guarded_keeps_earlier_checks_and_reports_the_exception() -> None:
    def broken() -> Iterator[results.Check]:
        yield results.check("first", True, "fine")
        raise RuntimeError("boom")

    assert results.guarded("group", broken) == [
        {"name": "first", "passed": True, "detail": "fine"},
        {"name": "group", "passed": False, "detail": "RuntimeError: boom"},
    ]


# ------------------------------------------------------------- CLI (no torch needed)


def test_versions_json_shape(tmp_path: Path) -> None:
    (tmp_path / "libcuda.so.1").write_bytes(b"")
    data = run_json("versions", "--scan-root", str(tmp_path))
    assert data["command"] == "versions"
    assert data["ok"] is True
    expected_keys = {
        "python",
        "torch",
        "cuda",
        "cudnn",
        "nccl",
        "arch_flags",
        "arch_list",
        "torchvision",
        "torchaudio",
        "triton",
        "os",
        "env",
        "packages",
        "libcuda",
        "errors",
    }
    assert expected_keys <= set(data), sorted(expected_keys - set(data))
    info = sys.version_info
    assert data["python"] == f"{info.major}.{info.minor}.{info.micro}"
    assert set(data["env"]) == set(versions.NVIDIA_ENV)
    assert data["libcuda"] == [str(tmp_path / "libcuda.so.1")]
    assert "pytest" in data["packages"]
    if data["torch"] is None:
        assert "torch" in data["errors"]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("nonsense").returncode == 2
    assert run_cli("torchscript", "--device", "tpu").returncode == 2
    assert run_cli("customop").returncode == 2
    missing = run_cli("all", "--expect", str(tmp_path / "absent.json"))
    assert missing.returncode == 2
    assert missing.stdout == ""


# ------------------------------------------------------------- CLI with torch


def test_torchscript_cpu_passes() -> None:
    pytest.importorskip("torch")
    data = run_json("torchscript", "--device", "cpu")
    failed = [c for c in data["checks"] if not c["passed"]]
    assert data["ok"] is True, failed
    names = {c["name"] for c in data["checks"]}
    assert {
        "control flow scripted negative",
        "control flow traced freezes branch",
        "eval mode frozen",
        "train mode nondeterministic",
        "conv net scripted",
        "loop scripted large input",
    } <= names
    assert data["tolerances"]["fp32"] == {"rtol": 1.3e-6, "atol": 1e-5}
    assert data["settings"]["cuda_matmul_allow_tf32"] is False


def test_torchscript_cuda_without_gpu_fails_cleanly() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    data = run_json("torchscript", "--device", "cuda")
    failed = [c["name"] for c in data["checks"] if not c["passed"]]
    assert data["ok"] is False
    assert failed == ["cuda available"]
    assert data["cuda"] is None


def test_all_compares_pins(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    expect = tmp_path / "expect.json"
    expect.write_text(
        json.dumps(
            {
                "python": f"{sys.version_info.major}.{sys.version_info.minor}",
                "torch": "0.0.0",
            }
        ),
        encoding="utf-8",
    )
    data = run_json("all", "--expect", str(expect), "--scan-root", str(tmp_path))
    assert data["pins_compared"] is True
    assert [(p["name"], p["passed"]) for p in data["pins"]] == [
        ("python", True),
        ("torch", False),
    ]
    assert data["ok"] is False
    assert data["torchscript"]["ok"] is True


@pytest.mark.skipif(
    not (shutil.which("g++") and shutil.which("ninja")), reason="needs g++ and ninja"
)
def test_customop_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    built = run_json("customop", "build", "--out", str(tmp_path))
    assert built["ok"] is True, built["checks"]
    assert {p.name for p in tmp_path.iterdir()} >= {
        "libptc_ops.so",
        "model.pt",
        "reference.json",
    }
    loaded = run_json("customop", "run", "--dir", str(tmp_path))
    assert loaded["ok"] is True, loaded["checks"]
    unloaded = run_json("customop", "run", "--dir", str(tmp_path), "--no-load")
    assert unloaded["ok"] is True, unloaded["checks"]
    assert "Unknown builtin op" in unloaded["load_error"]

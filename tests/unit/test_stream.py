"""The classic builder's output stream, as the engine sends it (no Docker)."""

from __future__ import annotations

from pytorch_cuda.build.stream import BuildOutput
from pytorch_cuda.core import names


def test_steps_cache_hits_downloads_and_colourless_lines():
    lines: list[str] = []
    steps: list[tuple[str, str, str, str]] = []
    output = BuildOutput(on_step=lambda *step: steps.append(step), on_line=lines.append)
    output.follow([
        {"stream": "Step 1/3 : FROM base AS os\n"},
        {"stream": "Step 2/3 : RUN install\n"},
        {"stream": " ---> Running in 0123456789ab\n"},
        {"stream": "\x1b[91mInstalled 27 packages in 435ms\n\x1b[0m"},
        {"stream": f"  Downloading {names.WHEELHOUSE_URL}{names.WHEELS_PATH}a.whl (1 kB)\n"},
        {"stream": "  Downloading https://index.example/a.whl (1 kB)\n"},
        {"stream": "  Downloading torch-2.8.0-cp311-cp311-manylinux_2_28_x86_64.whl (888.1 MB)\n"},
        {"stream": "\x1b[91mDownloading scipy (33.7MiB)\n\x1b[0m"},  # uv, from the wheelhouse
        {"stream": " ---> 0123456789ab\n"},
        {"stream": "Step 3/3 : ENV A=1\n"},
        {"stream": " ---> Using cache\n"},
        {"stream": " ---> ba9876543210\n"},
        {"aux": {"ID": "sha256:" + "c" * 64}},
    ])
    assert [s[:3] for s in steps] == [("1", "3", "os"), ("2", "3", "os"), ("3", "3", "os")]
    assert "Installed 27 packages in 435ms" in lines and not any("\x1b" in line for line in lines)
    assert output.python_downloads == [
        "Downloading https://index.example/a.whl (1 kB)",
        "Downloading torch-2.8.0-cp311-cp311-manylinux_2_28_x86_64.whl (888.1 MB)"]
    assert (output.steps, output.cached_steps) == (2, 1)
    assert output.image_id == "sha256:" + "c" * 64 and output.error is None


def test_an_error_ends_the_stream():
    output = BuildOutput().follow([{"stream": "Step 1/2 : RUN false\n"},
                                   {"errorDetail": {"message": "returned a non-zero code: 1"}},
                                   {"stream": "Step 2/2 : never\n"}])
    assert output.error == "returned a non-zero code: 1" and output.step == "step 1/2 [-]"

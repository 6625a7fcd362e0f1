"""Shared pytest options: --require-gpu turns GPU skips into failures."""


def pytest_addoption(parser):
    """Register the project's options."""
    group = parser.getgroup("pytorch-cuda")
    group.addoption("--require-gpu", action="store_true",
                    help="fail (instead of skip) the CUDA tests when no GPU is available")
    group.addoption("--repro", action="store_true",
                    help="also run the rebuild of the published prod image from a fresh clone")
    group.addoption("--cell", action="append", default=[],
                    help="cell(s) whose images the integration tests run (default: the default cell)")

"""Checks that run inside the pytorch-cuda images (and on a plain host Python).

Run as ``python -m ptc_checks <command>``; every command prints one JSON object
on stdout. Only the standard library is imported at module level, so the pure
helpers (version comparison, arch-list normalisation) work without torch.
"""

__version__ = "1.0.0"

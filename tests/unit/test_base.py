"""What the base bootstrap installs (no Docker, no archive)."""

from __future__ import annotations

import pytest

from pytorch_cuda.base import bootstrap
from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import VERSIONS
from pytorch_cuda.lock import locking
from pytorch_cuda.matrix import load_matrix


def test_the_base_installs_the_runtime_packages_and_the_package_manager_at_their_pins():
    cell = load_matrix(VERSIONS).default_cell
    pins = locking.apt_pins(cell.os)
    got = bootstrap.includes(cell)
    assert got[:len(bootstrap.INCLUDE)] == list(bootstrap.INCLUDE)
    for name in (*cell.matrix.apt_packages(cell.os, "runtime"), names.PACKAGE_MANAGER):
        assert f"{name}={pins[name]}" in got


def test_a_lock_without_the_package_managers_hash_is_one_sentence(monkeypatch):
    cell = load_matrix(VERSIONS).default_cell
    monkeypatch.setattr(locking, "package_manager_deb", lambda os_: None)
    with pytest.raises(UserError, match=rf"^locks/{cell.os.name}/apt\.txt has no pin \(with its "
                                        rf"sha256 for {names.PACKAGE_MANAGER}\) for "
                                        rf"{names.PACKAGE_MANAGER}: run 'python build\.py lock'$"):
        bootstrap.includes(cell)

"""Every image, inspected with testinfra: no driver library, the package record."""

from __future__ import annotations

import json

import pytest
from testinfra.host import Host

RECORD = "/usr/share/pytorch-cuda/packages.json"


@pytest.fixture(scope="module")
def at_rest(any_image, infra_host) -> Host:
    """The image's files as shipped: an idle container (no entrypoint), inspected as root."""
    return infra_host(any_image, "root", command=["sleep", "infinity"], entrypoint=[])[1]


def test_no_libcuda_ships(any_image, at_rest):
    found = at_rest.check_output("find / -xdev -name 'libcuda.so*'")
    assert found == "", f"{any_image.name}: libcuda ships in the image:\n{found}"


def test_package_record(any_image, at_rest):
    record_file = at_rest.file(RECORD)
    assert (record_file.user, record_file.mode) == ("root", 0o644), (
        f"{any_image.name}: {RECORD} is {record_file.user} {oct(record_file.mode)}")
    record = json.loads(record_file.content_string)
    assert record["pip"]["torch"].startswith(any_image.cell.matrix.torch_version)
    assert f"python{any_image.cell.os.python}" in record["apt"]

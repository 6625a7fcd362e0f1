"""Canonical tar headers: POSIX ustar plus PAX records only where a value does not fit."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence

BLOCK = 512

_PAX_NAME = "././@PaxHeader"

XATTR_PREFIX = "SCHILY.xattr."


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal field; 0 when the value lives in a PAX record."""
    fits = 0 <= value < 8 ** (width - 1)
    return b"%0*o\0" % (width - 1, value if fits else 0)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while length != len(str(length)) + len(body):
        length = len(str(length)) + len(body)
    return b"%d" % length + body


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _ustar(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    dev: tuple[int, int],
) -> bytes:
    block = b"".join(
        (
            name[:100].ljust(100, b"\0"),
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b" " * 8,
            typeflag,
            linkname[:100].ljust(100, b"\0"),
            b"ustar\x0000",
            b"\0" * 64,
            _octal(dev[0], 8),
            _octal(dev[1], 8),
        )
    ).ljust(BLOCK, b"\0")
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def tar_header(
    name: str,
    typeflag: bytes,
    *,
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    linkname: str = "",
    dev: tuple[int, int] = (0, 0),
    xattrs: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    """The canonical header blocks of one tar entry (PAX header when needed)."""
    bname, blink = encode(name), encode(linkname)
    records = [(encode(XATTR_PREFIX + key), value) for key, value in xattrs]
    for key, text in ((b"path", bname), (b"linkpath", blink)):
        if len(text) > 100 or not text.isascii():
            records.append((key, text))
    for key, value, width in (
        (b"gid", gid, 8),
        (b"mtime", mtime, 12),
        (b"size", size, 12),
        (b"uid", uid, 8),
    ):
        if not 0 <= value < 8 ** (width - 1):
            records.append((key, b"%d" % value))
    head = _ustar(bname, typeflag, mode, uid, gid, size, mtime, blink, dev)
    if not records:
        return head
    data = b"".join(_pax_record(k, v) for k, v in sorted(records))
    pax = _ustar(
        encode(_PAX_NAME), tarfile.XHDTYPE, 0, 0, 0, len(data), 0, b"", (0, 0)
    )
    return pax + data + padding(len(data)) + head

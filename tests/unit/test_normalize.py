"""Normalization of saved images and the layer diff, on synthetic archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from pytorch_cuda.repro.layerdiff import FileDiff, diff_archives, diff_configs, format_diff
from pytorch_cuda.repro.chains import chain_ids, chains_of
from pytorch_cuda.repro.config import canonical_json, rfc3339
from pytorch_cuda.repro.layercache import LayerCache
from pytorch_cuda.repro.normalize import normalize_archive, normalize_images
from pytorch_cuda.repro.saved import open_saved_image, open_saved_images
from pytorch_cuda.repro.tarformat import tar_header

EPOCH = 1_600_000_000
OLD = 1_000_000_000  # older than EPOCH: clamping keeps it
LONG = "opt/" + "deep/" * 22 + "name.txt"
CAP = (
    b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
)


@dataclass(frozen=True)
class Item:
    """One synthetic tar entry."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int | None = None  # None: the build's time
    pax: dict[str, str] = field(default_factory=dict)


BASE = [
    Item("bin", tarfile.DIRTYPE, mode=0o755),
    Item(
        "bin/tool",
        data=b"#!/bin/sh\necho tool\n",
        mode=0o755,
        pax={
            "SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape"),
            "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0",
        },
    ),
    Item("bin/sh", tarfile.SYMTYPE, link="tool", mode=0o777),
    Item("dev", tarfile.DIRTYPE, mode=0o755, mtime=OLD),
    Item("dev/null", tarfile.CHRTYPE, mode=0o666, mtime=OLD),
    Item("etc", tarfile.DIRTYPE, mode=0o755, mtime=OLD),
    Item("etc/hosts", data=b"127.0.0.1 localhost\n", mtime=OLD),
    Item("usr", tarfile.DIRTYPE, mode=0o755),
    Item("usr/lib", tarfile.DIRTYPE, mode=0o755),
    Item(
        "usr/lib/libz.so.1", data=b"\x7fELF" + bytes(range(256)) * 9, uid=1000, gid=1000
    ),
    Item(
        "usr/lib/alias.so",
        tarfile.LNKTYPE,
        link="usr/lib/libz.so.1",
        uid=1000,
        gid=1000,
    ),
]
APP = [
    Item("etc", tarfile.DIRTYPE, mode=0o755),
    Item("etc/.wh.hosts"),
    Item("opt", tarfile.DIRTYPE, mode=0o755),
    Item("opt/app.py", data=b"print('hello')\n"),
    Item("opt/data.bin", data=random.Random(7).randbytes(70_000)),
    Item("opt/naïve.txt", data=b"unicode name\n"),
    Item("opt/.wh..wh..opq"),
    Item(LONG, data=b"long name\n"),
]


def layer_tar(
    items: list[Item],
    build_time: int,
    *,
    reverse: bool = False,
    fmt: int = tarfile.PAX_FORMAT,
    uname: str = "root",
) -> bytes:
    """A layer tar as some engine might write it."""
    buffer = io.BytesIO()
    numbered = list(enumerate(items))
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for number, item in reversed(numbered) if reverse else numbered:
            info = tarfile.TarInfo(item.name)
            info.type, info.mode, info.linkname = item.kind, item.mode, item.link
            info.uid, info.gid, info.uname, info.gname = (
                item.uid,
                item.gid,
                uname,
                uname,
            )
            info.mtime = build_time + number if item.mtime is None else item.mtime
            info.size = len(item.data)
            if item.kind == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 3
            info.pax_headers = (
                {**item.pax, "atime": f"{build_time}.5"}
                if fmt == tarfile.PAX_FORMAT
                else {}
            )
            tar.addfile(info, io.BytesIO(item.data) if item.data else None)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_json(layers: list[bytes], created: str, host: str) -> bytes:
    history = [
        {"created": created, "created_by": f"/bin/sh -c #(nop) COPY {n}"}
        for n in range(len(layers))
    ]
    history.insert(
        1, {"created": created, "created_by": "ENV A=1", "empty_layer": True}
    )
    run = {
        "Hostname": host,
        "Image": "sha256:" + host * 8,
        "Env": ["A=1"],
        "Cmd": ["python"],
        "Labels": {"keep": "me"},
    }
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "docker_version": "20.10.24",
            "container": host,
            "config": run,
            "container_config": {**run, "Cmd": ["/bin/sh", "-c", "#(nop) COPY"]},
            "history": history,
            "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
        },
        indent=2,
    ).encode()


def outer_tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_234_567
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def legacy_archive(layers: list[bytes], config: bytes) -> bytes:
    """Engine 20.10 layout; a repeated layer is a symlink to its first copy."""
    files = {f"{sha(config)[7:]}.json": config}
    links: dict[str, str] = {}
    paths = []
    for number, layer in enumerate(layers):
        folder = hashlib.sha256(b"v1%d" % number).hexdigest()
        paths.append(f"{folder}/layer.tar")
        first = next((p for p, d in zip(paths, layers, strict=False) if d == layer))
        if first != paths[-1]:
            links[paths[-1]] = f"../{first}"
        else:
            files[paths[-1]] = layer
        files[f"{folder}/VERSION"] = b"1.0"
    manifest = [
        {"Config": f"{sha(config)[7:]}.json", "RepoTags": ["src:1"], "Layers": paths}
    ]
    files["manifest.json"] = json.dumps(manifest).encode()
    return outer_tar(files, links)


def oci_archive(
    layers: list[bytes],
    config: bytes,
    *,
    manifest_json: bool = True,
    compress: bool = False,
) -> bytes:
    """Engine 25+ layout (index.json and manifest.json side by side)."""
    blobs = [gzip.compress(layer, mtime=0) if compress else layer for layer in layers]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": sha(config), "size": len(config)},
            "layers": [{"digest": sha(blob), "size": len(blob)} for blob in blobs],
        }
    ).encode()
    index = {"schemaVersion": 2, "manifests": [{"digest": sha(manifest)}]}
    files = {
        f"blobs/sha256/{sha(blob)[7:]}": blob for blob in [*blobs, config, manifest]
    }
    files["index.json"] = json.dumps(index).encode()
    files["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    if manifest_json:
        files["manifest.json"] = json.dumps(
            [
                {
                    "Config": f"blobs/sha256/{sha(config)[7:]}",
                    "RepoTags": ["src:1"],
                    "Layers": [f"blobs/sha256/{sha(blob)[7:]}" for blob in blobs],
                }
            ]
        ).encode()
    return outer_tar(files)


def build(
    tmp: Path,
    name: str,
    *,
    when: int,
    reverse: bool = False,
    fmt: int = tarfile.PAX_FORMAT,
    uname: str = "root",
    layout: str = "legacy",
    base: list[Item] = BASE,
    app: list[Item] = APP,
    extra: tuple[bytes, ...] = (),
) -> Path:
    """A saved image of base + app layers as one build at time ``when`` gives."""
    layers = [
        layer_tar(base, when, reverse=reverse, fmt=fmt, uname=uname),
        layer_tar(app, when + 100, reverse=reverse, fmt=fmt, uname=uname),
        *extra,
    ]
    config = config_json(
        layers, rfc3339(when).replace("Z", ".123456789Z"), host=f"{when:x}"
    )
    make = {
        "legacy": legacy_archive,
        "oci": oci_archive,
        "oci-gzip": lambda la, co: oci_archive(
            la, co, manifest_json=False, compress=True
        ),
    }[layout]
    path = tmp / f"{name}.tar"
    path.write_bytes(make(layers, config))
    return path


def normalized(tmp: Path, src: Path, **options: object) -> Path:
    dst = tmp / f"{src.stem}.norm.tar"
    normalize_archive(src, dst, EPOCH, **options)  # type: ignore[arg-type]
    return dst


def layers_of(path: Path) -> list[list[tarfile.TarInfo]]:
    with open_saved_image(path) as image:
        return [layer.members() for layer in image.layers]


def layer_bytes(path: Path) -> list[bytes]:
    with open_saved_image(path) as image:
        return [io.BufferedReader(layer.window()).read() for layer in image.layers]


def two_images(when: int, layout: str) -> tuple[bytes, list[tuple[list[bytes], bytes]]]:
    """A `docker save` of two images sharing their first layer (as dev and prod do), and
    each image's (layers, config)."""
    shared = layer_tar(BASE, when)
    images = []
    for number, top in enumerate((APP, changed(APP, "opt/app.py", data=b"print('prod')\n"))):
        layers = [shared, layer_tar(top, when + 100)]
        images.append((layers, config_json(layers, rfc3339(when + number), f"{when + number:x}")))
    if layout == "legacy":
        files: dict[str, bytes] = {}
        entries = []
        for layers, config in images:
            paths = [f"{hashlib.sha256(layer).hexdigest()}/layer.tar" for layer in layers]
            files.update(dict(zip(paths, layers, strict=True)))
            files[f"{sha(config)[7:]}.json"] = config
            entries.append({"Config": f"{sha(config)[7:]}.json", "RepoTags": None,
                            "Layers": paths})
        files["manifest.json"] = json.dumps(entries).encode()
        return outer_tar(files), images
    blobs: dict[str, bytes] = {}
    digests = []
    for layers, config in images:
        manifest = json.dumps({
            "schemaVersion": 2, "config": {"digest": sha(config), "size": len(config)},
            "layers": [{"digest": sha(layer), "size": len(layer)} for layer in layers],
        }).encode()
        for blob in (*layers, config, manifest):
            blobs[f"blobs/sha256/{sha(blob)[7:]}"] = blob
        digests.append({"digest": sha(manifest)})
    index = json.dumps({"schemaVersion": 2, "manifests": digests}).encode()
    return outer_tar({**blobs, "index.json": index}), images


@pytest.mark.parametrize("layout", ["legacy", "oci"])
def test_images_saved_together_normalize_as_alone(tmp_path: Path, layout: str) -> None:
    data, images = two_images(1_700_000_000, layout)
    (src := tmp_path / "both.tar").write_bytes(data)
    together = normalize_images(src, tmp_path / "both.out", EPOCH)
    alone = []
    for number, (layers, config) in enumerate(images):
        (one := tmp_path / f"{number}.tar").write_bytes(legacy_archive(layers, config))
        alone.append(normalize_archive(one, tmp_path / f"{number}.out", EPOCH))
    assert [r.image_id for r in together] == [r.image_id for r in alone]
    assert [r.source_id for r in together] == [sha(config) for _, config in images]
    assert together[0].diff_ids[0] == together[1].diff_ids[0]
    assert together[1].layers[0].action == "repeated"
    assert together[1].layers[0].written == 0 < together[0].layers[0].written
    with tarfile.open(together[0].path) as out:
        blobs = [m.name for m in out.getmembers() if m.name.startswith("blobs/sha256/")]
    assert len(blobs) == len(set(blobs)) == 3 + 2  # shared + two tops, two configs
    with open_saved_images(together[0].path) as loaded:
        assert [image.image_id for image in loaded] == [r.image_id for r in alone]
    assert layer_bytes(alone[0].path)[0] == layer_bytes(alone[1].path)[0]


def test_one_image_function_refuses_an_archive_of_two(tmp_path: Path) -> None:
    data, _ = two_images(1_700_000_000, "legacy")
    (src := tmp_path / "both.tar").write_bytes(data)
    with pytest.raises(ValueError, match="holds 2 images"):
        normalize_archive(src, tmp_path / "out.tar", EPOCH)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.tar"]


# --- reproducibility --------------------------------------------------------


@pytest.mark.parametrize("layout", ["legacy", "oci"])
def test_two_builds_give_one_image(tmp_path: Path, layout: str) -> None:
    first = build(tmp_path, "a", when=1_700_000_000, layout=layout)
    second = build(
        tmp_path,
        "b",
        when=1_800_000_000,
        reverse=True,
        uname="",
        layout=layout,
    )
    assert layer_bytes(first) != layer_bytes(second)
    one = normalize_archive(first, tmp_path / "a.out", EPOCH)
    two = normalize_archive(second, tmp_path / "b.out", EPOCH)
    assert one.image_id == two.image_id
    assert one.diff_ids == two.diff_ids
    assert layer_bytes(one.path) == layer_bytes(two.path)
    assert one.path.read_bytes() == two.path.read_bytes()


def test_source_tar_format_does_not_matter(tmp_path: Path) -> None:
    base = [replace(item, pax={}) for item in BASE]
    pax = build(tmp_path, "a", when=1_700_000_000, base=base)
    gnu = build(tmp_path, "b", when=1_700_000_000, base=base, fmt=tarfile.GNU_FORMAT)
    assert layer_bytes(pax) != layer_bytes(gnu)
    assert (
        normalize_archive(pax, tmp_path / "a.out", EPOCH).image_id
        == normalize_archive(gnu, tmp_path / "b.out", EPOCH).image_id
    )


def test_layouts_and_compression_agree(tmp_path: Path) -> None:
    ids = {
        normalize_archive(
            build(tmp_path, layout, when=1_700_000_000, layout=layout),
            tmp_path / f"{layout}.out",
            EPOCH,
        ).image_id
        for layout in ("legacy", "oci", "oci-gzip")
    }
    assert len(ids) == 1


def test_stream_source(tmp_path: Path) -> None:
    src = build(tmp_path, "a", when=1_700_000_000)

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            return self._data.readinto(buffer)

    from_path = normalize_archive(src, tmp_path / "p.out", EPOCH)
    from_pipe = normalize_archive(Pipe(src.read_bytes()), tmp_path / "s.out", EPOCH)
    assert from_pipe.path.read_bytes() == from_path.path.read_bytes()


def test_idempotent(tmp_path: Path) -> None:
    once = normalize_archive(
        build(tmp_path, "a", when=1_700_000_000),
        tmp_path / "once.tar",
        EPOCH,
        labels={"x": "y"},
    )
    twice = normalize_archive(
        once.path, tmp_path / "twice.tar", EPOCH, labels={"x": "y"}
    )
    assert twice.path.read_bytes() == once.path.read_bytes()
    assert twice.image_id == once.image_id


def test_repeated_layer_written_once(tmp_path: Path) -> None:
    again = layer_tar(BASE, 1_700_000_000)
    src = build(tmp_path, "a", when=1_700_000_000, extra=(again,))
    result = normalize_archive(src, tmp_path / "out.tar", EPOCH)
    assert [layer.action for layer in result.layers] == [
        "rewritten",
        "rewritten",
        "repeated",
    ]
    assert result.diff_ids[0] == result.diff_ids[2]
    with tarfile.open(result.path) as tar:
        names = tar.getnames()
    assert len(names) == len(set(names))
    assert layer_bytes(result.path)[2] == layer_bytes(result.path)[0]


def test_empty_layer_stays_dockers_empty_layer(tmp_path: Path) -> None:
    src = build(tmp_path, "a", when=1_700_000_000, extra=(bytes(1024),))
    result = normalize_archive(src, tmp_path / "out.tar", EPOCH)
    assert result.diff_ids[2] == (
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    )


# --- what a normalized layer looks like ----------------------------------------


def test_layer_rules(tmp_path: Path) -> None:
    src = build(tmp_path, "a", when=1_700_000_000)
    out = normalized(tmp_path, src)
    base, app = layers_of(out)
    names = [m.name for m in base]
    assert names == [
        "bin",
        "bin/sh",
        "bin/tool",
        "dev",
        "dev/null",
        "etc",
        "etc/hosts",
        "usr",
        "usr/lib",
        "usr/lib/alias.so",
        "usr/lib/libz.so.1",
    ]
    assert [m.name for m in app] == [
        "etc",
        "etc/.wh.hosts",
        "opt",
        "opt/.wh..wh..opq",
        "opt/app.py",
        "opt/data.bin",
        LONG,
        "opt/naïve.txt",
    ]
    by_name = {m.name: m for m in base}
    # the hard link group is re-rooted at the first path
    assert by_name["usr/lib/alias.so"].isreg()
    assert by_name["usr/lib/libz.so.1"].islnk()
    assert by_name["usr/lib/libz.so.1"].linkname == "usr/lib/alias.so"
    assert (by_name["usr/lib/libz.so.1"].uid, by_name["usr/lib/alias.so"].gid) == (
        1000,
        1000,
    )
    assert by_name["dev/null"].ischr() and by_name["dev/null"].devminor == 3
    old = {item.name for item in BASE if item.mtime == OLD}
    assert {m.name for m in base if m.mtime == OLD} == old
    assert {m.mtime for m in base if m.name not in old} == {EPOCH}
    assert {m.mtime for m in app} == {EPOCH}
    for member in base + app:
        assert (member.uname, member.gname) == ("", "")
        assert set(member.pax_headers) <= {"path", "SCHILY.xattr.security.capability"}
    assert (
        by_name["bin/tool"]
        .pax_headers["SCHILY.xattr.security.capability"]
        .encode("utf-8", "surrogateescape")
        == CAP
    )
    assert by_name["bin/tool"].mode == 0o755 and by_name["bin/sh"].linkname == "tool"


def test_file_bytes_unchanged(tmp_path: Path) -> None:
    src = build(tmp_path, "a", when=1_700_000_000)
    out = normalized(tmp_path, src)
    for layer_in, layer_out in zip(layer_bytes(src), layer_bytes(out), strict=True):
        assert files(layer_in) == files(layer_out)


def files(layer: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        # a hard link reads as its target's data
        return {
            m.name: tar.extractfile(m).read() for m in tar if m.isfile() or m.islnk()
        }  # type: ignore[union-attr]


def test_mtime_set(tmp_path: Path) -> None:
    out = normalized(tmp_path, build(tmp_path, "a", when=1_700_000_000), mtime="set")
    assert {m.mtime for layer in layers_of(out) for m in layer} == {EPOCH}


def test_config_rules(tmp_path: Path) -> None:
    src = build(tmp_path, "a", when=1_700_000_000)
    result = normalize_archive(
        src,
        tmp_path / "out.tar",
        EPOCH,
        tags=["demo:1"],
        labels={"org.example.rev": "abc"},
    )
    assert result.image_id == sha(result.config)
    config = json.loads(result.config)
    assert canonical_json(config) == result.config
    assert config["created"] == "2020-09-13T12:26:40Z" == rfc3339(EPOCH)
    assert {item["created"] for item in config["history"]} == {config["created"]}
    assert [item.get("empty_layer") for item in config["history"]] == [None, True, None]
    assert not {"container", "container_config", "docker_version"} & config.keys()
    assert not {"Hostname", "Image"} & config["config"].keys()
    assert config["config"]["Labels"] == {"keep": "me", "org.example.rev": "abc"}
    assert config["config"]["Cmd"] == ["python"]
    assert config["rootfs"]["diff_ids"] == [sha(b) for b in layer_bytes(result.path)]
    with tarfile.open(result.path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert tar.extractfile(manifest[0]["Config"]).read() == result.config  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["demo:1"]
    assert "layer 1: rewritten" in result.summary()


def test_unsupported_input_leaves_nothing(tmp_path: Path) -> None:
    config = config_json([b"zstd"], "2024-01-01T00:00:00Z", "h")
    src = tmp_path / "z.tar"
    src.write_bytes(legacy_archive([b"\x28\xb5\x2f\xfd" + bytes(600)], config))
    with pytest.raises(ValueError, match="zstd"):
        normalize_archive(src, tmp_path / "out.tar", EPOCH)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.tar"]


def test_header_of_huge_values_uses_pax() -> None:
    header = tar_header("big", tarfile.REGTYPE, size=9 << 30, mtime=-5, uid=1 << 22)
    with tarfile.open(fileobj=io.BytesIO(header + bytes(1024))) as tar:
        info = tar.next()
    assert info is not None
    assert (info.size, info.mtime, info.uid) == (9 << 30, -5, 1 << 22)


# --- cache ------------------------------------------------------------------


def test_cache_keeps_layers_and_spots_normalized_ones(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    src = build(tmp_path, "a", when=1_700_000_000)
    first = normalize_archive(
        src, tmp_path / "1.tar", EPOCH, cache, cache_keep_bytes=1 << 30
    )
    again = normalize_archive(src, tmp_path / "2.tar", EPOCH, cache)
    derived = normalize_archive(first.path, tmp_path / "3.tar", EPOCH, cache)
    assert [x.action for x in first.layers] == ["rewritten"] * 2
    assert [x.action for x in again.layers] == ["cached"] * 2
    assert [x.action for x in derived.layers] == ["verbatim"] * 2
    assert (
        first.path.read_bytes() == again.path.read_bytes() == derived.path.read_bytes()
    )
    mapping = json.loads((cache / "layers.json").read_text())
    for layer in first.layers:
        for source in (layer.source_diff_id, layer.diff_id):
            key = LayerCache.key(source, EPOCH, "clamp")
            assert mapping[key] == {"diff_id": layer.diff_id, "size": layer.size}
    kept = sorted(p.name for p in (cache / "blobs" / "sha256").iterdir())
    assert kept == sorted(d[7:] for d in first.diff_ids)


def test_corrupt_kept_layer_is_rewritten(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    src = build(tmp_path, "a", when=1_700_000_000)
    first = normalize_archive(
        src, tmp_path / "1.tar", EPOCH, cache, cache_keep_bytes=1 << 30
    )
    kept = cache / "blobs" / "sha256" / first.diff_ids[1][7:]
    data = bytearray(kept.read_bytes())
    data[600] ^= 1
    kept.write_bytes(data)
    again = normalize_archive(
        src, tmp_path / "2.tar", EPOCH, cache, cache_keep_bytes=1 << 30
    )
    assert [x.action for x in again.layers] == ["cached", "rewritten"]
    assert again.path.read_bytes() == first.path.read_bytes()
    assert sha(kept.read_bytes()) == first.diff_ids[1]


def test_cache_without_kept_layers_and_other_epoch(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    src = build(tmp_path, "a", when=1_700_000_000)
    first = normalize_archive(src, tmp_path / "1.tar", EPOCH, cache)
    again = normalize_archive(src, tmp_path / "2.tar", EPOCH, cache)
    derived = normalize_archive(first.path, tmp_path / "3.tar", EPOCH, cache)
    later = normalize_archive(first.path, tmp_path / "4.tar", EPOCH + 1, cache)
    assert [x.action for x in again.layers] == ["rewritten"] * 2
    assert [x.action for x in derived.layers] == ["verbatim"] * 2
    assert [x.action for x in later.layers] == ["rewritten"] * 2
    assert not list((cache / "blobs" / "sha256").iterdir())


def test_cache_is_bounded(tmp_path: Path) -> None:
    cache, blobs = tmp_path / "cache", tmp_path / "cache" / "blobs" / "sha256"
    one = build(tmp_path, "a", when=1_700_000_000)
    plain = normalize_archive(one, tmp_path / "0.tar", EPOCH)
    budget = max(layer.size for layer in plain.layers)
    normalize_archive(one, tmp_path / "1.tar", EPOCH, cache, cache_keep_bytes=budget)
    assert len(list(blobs.iterdir())) == 1
    app = changed(APP, "opt/data.bin", data=bytes(90_000))
    two = build(tmp_path, "b", when=1_700_000_000, app=app)
    result = normalize_archive(
        two, tmp_path / "2.tar", EPOCH, cache, cache_keep_bytes=budget + 20_480
    )
    kept = list(blobs.iterdir())
    assert [p.name for p in kept] == [result.diff_ids[1][7:]]
    assert kept[0].stat().st_size <= budget + 20_480


# --- layers the engine has ----------------------------------------------------

# diff_ids of a four-layer image and the chain IDs an engine's layer store
# (image/overlay2/layerdb/sha256/<chain>) files those layers under
ENGINE_DIFF_IDS = [
    "sha256:99dc33004afe379f715b781abc27848a094dc23c85a42cea7a56a3c421f276e1",
    "sha256:d815c5dfbea6bfb6b482db110df1e8c7c9f2a81d622f831471b1ac9434eb4a07",
    "sha256:a93e2a541372becb0286b840d184ec5fbeabba3328d91846d3c03c8f13832322",
    "sha256:f2ba4a48892b14d021482cdebc9453435727622de160db00757c7b0dbf00ea22",
]
ENGINE_CHAIN_IDS = [
    "sha256:99dc33004afe379f715b781abc27848a094dc23c85a42cea7a56a3c421f276e1",
    "sha256:dca295f9d27de175ff363f1c29af13e4fb76266faada3033d45e3a65fc0fee18",
    "sha256:553e2fc61864e4a61af1b162685d9a8e121af51a1f93047173b2da9d76e72e32",
    "sha256:0e0a1ae02db68262ebd148e2ac334152f807e274983912279dc27ef1049a27fc",
]


def test_chain_ids() -> None:
    assert chain_ids(ENGINE_DIFF_IDS) == ENGINE_CHAIN_IDS
    assert chain_ids([]) == []
    one, two = sha(b"one"), sha(b"two")
    assert chain_ids([one, two]) == [one, sha(f"{one} {two}".encode())]
    assert chains_of([ENGINE_DIFF_IDS[:2], ENGINE_DIFF_IDS[:1], [], [two]]) == {
        *ENGINE_CHAIN_IDS[:2],
        two,
    }


def archive_layers(path: Path) -> list[tuple[str, int]]:
    """(path, size) in the archive of each layer in manifest.json."""
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        return [(name, tar.getmember(name).size) for name in manifest[0]["Layers"]]


def blank(src: Path, dst: Path, index: int, member: str | None = None) -> Path:
    """A copy of ``src`` with the bytes of layer ``index`` (or only the data of
    one file in it) zeroed: a normalization that reads them goes wrong."""
    with open_saved_image(src) as image:
        layer = image.layers[index]
        start, size = layer.offset, layer.size
        if member is not None:
            [info] = [m for m in layer.members() if m.name == member]
            start, size = start + info.offset_data, info.size
    data = bytearray(src.read_bytes())
    data[start : start + size] = bytes(size)
    dst.write_bytes(data)
    return dst


def test_present_layers_are_placeholders(tmp_path: Path) -> None:
    src = build(tmp_path, "a", when=1_700_000_000)
    plain = normalize_archive(src, tmp_path / "plain.tar", EPOCH)
    chains = chain_ids(plain.diff_ids)
    assert plain.chain_ids == tuple(chains)
    base = normalize_archive(
        src, tmp_path / "base.tar", EPOCH, present_chains={chains[0], sha(b"x")}
    )
    assert (base.image_id, base.config) == (plain.image_id, plain.config)
    assert base.chain_ids == plain.chain_ids
    # no cache: the base layer was hashed to find its chain, not written
    assert [(x.action, x.entries) for x in base.layers] == [
        ("present", len(BASE)),
        ("rewritten", len(APP)),
    ]
    assert base.layers[0].written == 0 and base.layers[0].size == plain.layers[0].size
    layers = archive_layers(base.path)
    assert layers == [
        (f"present/sha256/{chains[0][7:]}", 0),
        archive_layers(plain.path)[1],
    ]
    assert layer_bytes(base.path)[1] == layer_bytes(plain.path)[1]
    assert base.size < plain.size
    assert "layer 0: present" in base.summary()
    assert "1 layer(s) the engine has" in base.summary()
    both = normalize_archive(src, tmp_path / "both.tar", EPOCH, present_chains=chains)
    assert both.image_id == plain.image_id
    assert [size for _, size in archive_layers(both.path)] == [0, 0]


def test_absent_chains_change_nothing(tmp_path: Path) -> None:
    src = build(tmp_path, "a", when=1_700_000_000)
    plain = normalize_archive(src, tmp_path / "plain.tar", EPOCH)
    # the right top layer on another base is another chain
    elsewhere = chain_ids([sha(b"other base"), plain.diff_ids[1]])
    other = normalize_archive(
        src, tmp_path / "other.tar", EPOCH, present_chains=elsewhere
    )
    assert [x.action for x in other.layers] == ["rewritten"] * 2
    assert other.path.read_bytes() == plain.path.read_bytes()


def test_repeated_layer_below_and_above_present_chain(tmp_path: Path) -> None:
    again = layer_tar(BASE, 1_700_000_000)
    src = build(tmp_path, "a", when=1_700_000_000, extra=(again,))
    plain = normalize_archive(src, tmp_path / "plain.tar", EPOCH)
    chains = chain_ids(plain.diff_ids)
    result = normalize_archive(
        src, tmp_path / "out.tar", EPOCH, present_chains=chains[:2]
    )
    assert result.image_id == plain.image_id
    assert [x.action for x in result.layers] == ["present", "present", "rewritten"]
    layers = archive_layers(result.path)
    assert [size for _, size in layers[:2]] == [0, 0]
    assert layers[2] == archive_layers(plain.path)[0]
    assert sha(layer_bytes(result.path)[2]) == plain.diff_ids[2] == plain.diff_ids[0]


def test_cache_map_decides_without_reading(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    src = build(tmp_path, "a", when=1_700_000_000)
    first = normalize_archive(src, tmp_path / "1.tar", EPOCH, cache)
    blind = blank(src, tmp_path / "blind.tar", 0)
    result = normalize_archive(
        blind,
        tmp_path / "2.tar",
        EPOCH,
        cache,
        present_chains=first.chain_ids[:1],
    )
    assert [(x.action, x.entries) for x in result.layers] == [
        ("present", 0),
        ("rewritten", len(APP)),
    ]
    assert result.image_id == first.image_id
    assert layer_bytes(result.path)[1] == layer_bytes(first.path)[1]


def test_canonical_layer_decides_from_headers(tmp_path: Path) -> None:
    once = normalize_archive(
        build(tmp_path, "a", when=1_700_000_000), tmp_path / "once.tar", EPOCH
    )
    # the data of a file in the base layer is never read; headers are
    blind = blank(once.path, tmp_path / "blind.tar", 0, "usr/lib/alias.so")
    result = normalize_archive(
        blind, tmp_path / "out.tar", EPOCH, present_chains=once.chain_ids[:1]
    )
    assert [x.action for x in result.layers] == ["present", "verbatim"]
    assert result.image_id == once.image_id
    assert layer_bytes(result.path)[1] == layer_bytes(once.path)[1]


# --- diff ---------------------------------------------------------------------


def changed(items: list[Item], name: str, **fields: object) -> list[Item]:
    return [replace(i, **fields) if i.name == name else i for i in items]  # type: ignore[arg-type]


def test_diff_reports_content_change(tmp_path: Path) -> None:
    good = normalized(tmp_path, build(tmp_path, "a", when=1_700_000_000))
    app = changed(APP, "opt/app.py", data=b"print('bye')\n")
    bad = normalized(
        tmp_path, build(tmp_path, "b", when=1_800_000_000, reverse=True, app=app)
    )
    with open_saved_image(good) as one, open_saved_image(bad) as two:
        assert one.layers[0].diff_id == two.layers[0].diff_id
    diffs = diff_archives(good, bad)
    assert [(d.index, [(f.path, f.kind) for f in d.files]) for d in diffs] == [
        (1, [("opt/app.py", "content")])
    ]
    assert diffs[0].files[0].a.startswith(sha(b"print('hello')\n"))
    report = format_diff(diffs, diff_configs(good, bad))
    assert "content   opt/app.py" in report
    assert "config rootfs.diff_ids[1]" in report


def test_diff_reports_mode_and_owner(tmp_path: Path) -> None:
    good = normalized(tmp_path, build(tmp_path, "a", when=1_700_000_000))
    app = changed(changed(APP, "opt/app.py", mode=0o755), "opt/data.bin", uid=7)
    bad = normalized(tmp_path, build(tmp_path, "b", when=1_700_000_000, app=app))
    [diff] = diff_archives(good, bad)
    assert diff.files == (
        FileDiff("opt/app.py", "mode", "0644", "0755"),
        FileDiff("opt/data.bin", "owner", "0:0 (-:-)", "7:0 (-:-)"),
    )


def test_diff_of_raw_builds_names_mtimes_and_order(tmp_path: Path) -> None:
    one = build(tmp_path, "a", when=1_700_000_000)
    two = build(tmp_path, "b", when=1_700_000_000, reverse=True)
    later = build(tmp_path, "c", when=1_700_000_001)
    assert [d.note for d in diff_archives(one, two)] == [
        "same files and metadata; entry order differs"
    ] * 2
    kinds = {f.kind for d in diff_archives(one, later) for f in d.files}
    assert kinds == {"mtime"}
    only = build(tmp_path, "d", when=1_700_000_000, app=APP[:-1])
    [diff] = diff_archives(one, only)
    assert [(f.path, f.kind) for f in diff.files] == [(LONG, "only-in-a")]
    assert format_diff([], []) == "images are identical: same config and layers"

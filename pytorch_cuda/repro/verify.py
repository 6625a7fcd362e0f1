"""`build.py verify-repro`: rebuild from scratch and prove the image ID is the same."""

from __future__ import annotations

import docker
import docker.errors

from pytorch_cuda.build import builder
from pytorch_cuda.core import gitinfo
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.progress import say, table
from pytorch_cuda.matrix import Image
from pytorch_cuda.repro import roundtrip
from pytorch_cuda.repro.layerdiff import diff_archives, diff_configs, format_diff


def _reference(client: docker.DockerClient, image: Image, against: str | None) -> str | None:
    ref = against or image.ref()
    try:
        found = client.images.get(ref)
    except docker.errors.ImageNotFound:
        if not against:
            return None
        found = _pull(client, against)
    built_from = found.labels.get("org.opencontainers.image.revision", "")
    if built_from != gitinfo.revision():
        raise UserError(f"{ref} was built from revision {built_from or 'unknown'}, not "
                        f"{gitinfo.revision()}: build it first, or use --twice")
    return found.id


def _pull(client: docker.DockerClient, ref: str) -> docker.models.images.Image:
    """Pull a reference image from its registry (a published image checked on a fresh machine)."""
    if "/" not in ref.split("@")[0]:
        raise UserError(f"--against {ref}: no such image on the engine")
    say(f"pulling {ref}")
    try:
        return client.images.pull(ref)
    except docker.errors.APIError as exc:
        raise UserError(f"--against {ref}: neither on the engine nor pullable "
                        f"({exc.explanation or exc})") from None


def _fresh(client: docker.DockerClient, image: Image, context, base_id: str,
           options: builder.BuildOptions, label: str):
    """A no-cache build of `image` and its normalized archive (not loaded: only compared)."""
    say(f"{image.name}: {label} (no build cache)")
    raw_id, _ = builder.build_raw(client, image, context, base_id, options)
    archive = roundtrip.WORK / f"verify-{label.replace(' ', '-')}-{image.variant}.tar"
    result = roundtrip.write_normalized(client, raw_id, image.name, archive,
                                           roundtrip.since_of(image.cell))
    return raw_id, result.image_id, archive


def verify(client: docker.DockerClient, images: list[Image], twice: bool,
           against: str | None, options: builder.BuildOptions) -> bool:
    """Rebuild each image without cache and compare; print digests or what differs."""
    rows, ok = [], True
    references: set[str] = set()  # images compared against (a pulled one has no tag): kept
    cell = images[0].cell
    with builder.prepared(client, cell, options) as (context, base_id):
        bases = builder.base_layers(client, base_id)
        for image in images:
            reference = None if twice else _reference(client, image, against)
            if reference:
                references.add(reference)
            to_remove: list[str] = []
            try:
                if reference is None:
                    raw_a, id_a, archive_a = _fresh(client, image, context, base_id, options,
                                                    "first build")
                    to_remove.append(raw_a)
                    with archive_a.open("rb") as data:
                        client.images.load(data)  # the second build is compared with it
                    to_remove.append(id_a)
                else:
                    id_a, archive_a = reference, None
                raw_b, id_b, archive_b = _fresh(client, image, context, base_id, options,
                                                "second build" if reference is None else "rebuild")
                to_remove.append(raw_b)
                same = id_a == id_b
                ok &= same
                rows.append([image.name, id_a[7:19], id_b[7:19],
                             "reproducible" if same else "DIFFERS"])
                if same:
                    print(f"{image.name}: reproducible: image {id_b}")
                    for i, diff_id in enumerate(client.images.get(id_a).attrs["RootFS"]["Layers"]):
                        print(f"  layer {i}: {diff_id}")
                else:
                    archive_a = roundtrip.WORK / f"verify-reference-{image.variant}.tar"
                    roundtrip.save(client, [id_a], archive_a)
                    print(f"{image.name}: NOT reproducible: {id_a} != {id_b}")
                    print(format_diff(diff_archives(archive_a, archive_b),
                                      diff_configs(archive_a, archive_b)))
            finally:
                for path in roundtrip.WORK.glob("verify-*.tar"):
                    path.unlink(missing_ok=True)
                for image_id in to_remove:
                    if image_id != reference:
                        try:
                            client.images.remove(image_id, force=True)
                        except docker.errors.APIError:
                            continue
        builder.prune(client, bases, keep=frozenset(references))
    print(table(["image", "reference", "rebuild", "result"], rows))
    return ok

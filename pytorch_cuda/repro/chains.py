"""Layer chain IDs: how an engine knows which layers it already has."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def chain_id(parent: str | None, diff_id: str) -> str:
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The chain ID of each layer of an image, from its diff_ids in order.

    The chain ID of the first layer is its diff_id; that of layer n is
    ``"sha256:" + sha256(f"{chain_id(n - 1)} {diff_id(n)}")`` (the OCI
    ChainID, which the engine's layer store is keyed by).
    """
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(chain_id(chains[-1] if chains else None, diff_id))
    return chains


def chains_of(layer_lists: Iterable[Iterable[str]]) -> set[str]:
    """Every chain ID of some images, given each one's diff_ids
    (``RootFS.Layers`` in ``docker image inspect``)."""
    return {chain for diff_ids in layer_lists for chain in chain_ids(diff_ids)}

"""The data-source interface and data-root resolution.

A data source holds examples grouped by class. Class ids are ``0..num_classes-1``. Every class
belongs to exactly one *pool*: ``"train"`` (classes that training clients may hold) or
``"heldout"`` (classes reserved for held-out clients, which never train). Keeping the pools
disjoint is what guarantees that held-out hospitals are evaluated on classes no training
hospital has seen.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from fedmeta.errors import FedmetaError
from fedmeta.options import Options
from fedmeta.registry import Registry
from fedmeta.tasks import CLASSIFICATION, TaskKind


class DataSource(ABC):
    """Examples grouped by class.

    Attributes
    ----------
    kind : TaskKind
        Classification (labels are class positions in an episode) or regression (targets come
        from :meth:`examples`).
    feature_shape : tuple[int, ...]
        Shape of one example, e.g. ``(1, 28, 28)``.
    num_classes : int
        Number of classes, ids ``0..num_classes-1``.
    """

    kind: TaskKind = CLASSIFICATION
    feature_shape: tuple[int, ...]
    num_classes: int

    @abstractmethod
    def pool(self, role: str) -> np.ndarray:
        """Class ids (int64, sorted) of the ``"train"`` or ``"heldout"`` pool."""

    @abstractmethod
    def num_examples(self, c: int) -> int:
        """Number of examples of class ``c``."""

    @abstractmethod
    def examples(self, c: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (float32, ``(len(idx), *feature_shape)``) of class ``c`` and, for regression,
        float32 targets ``(len(idx), 1)``; ``None`` for classification."""

    def groups(self, role: str) -> dict[str, np.ndarray] | None:
        """Optional natural grouping of a pool's classes (Omniglot: alphabets)."""
        return None


DATASETS: Registry[type] = Registry("dataset", package="fedmeta.data")
"""Every data source, by name; each module of :mod:`fedmeta.data` registers its own."""


def cache_dir() -> Path:
    """Folder for preprocessed caches and downloads: ``$FEDMETA_CACHE`` or ``~/.cache/fedmeta``."""
    return Path(os.environ.get("FEDMETA_CACHE", Path.home() / ".cache" / "fedmeta"))


def resolve_root(dataset: str, configured: str | None, exists) -> Path:
    """Find a dataset's root folder.

    Looks, in order, at the scenario's ``data.root`` key, ``$FEDMETA_DATA/<dataset>`` and the user
    cache folder ``cache_dir()/<dataset>``. ``exists(path)`` says whether a candidate holds the
    data. With ``data.root`` set, only that path is considered.

    Raises
    ------
    FedmetaError
        If no candidate holds the data; the message lists every place tried and the fix.
    """
    if configured:
        root = Path(configured).expanduser()
        if not exists(root):
            raise FedmetaError(
                f"data.root = {configured!r} does not hold the {dataset} data; "
                f"point data.root at the folder that holds it"
            )
        return root
    candidates: list[Path] = []
    if os.environ.get("FEDMETA_DATA"):
        candidates.append(Path(os.environ["FEDMETA_DATA"]).expanduser() / dataset)
    candidates.append(cache_dir() / dataset)
    for root in candidates:
        if exists(root):
            return root
    tried = ", ".join(str(c) for c in candidates)
    raise FedmetaError(
        f"{dataset} data not found (tried {tried}); set data.root in the scenario, "
        f"or FEDMETA_DATA to the folder that holds {dataset}/, or data.download = true"
    )


DatasetOptions = Options
"""Base of every dataset spec's ``Options`` (kebab-case keys, unknown keys rejected, frozen)."""


def split_pools(
    num_classes: int, heldout_fraction: float, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)`` class ids: the last ``round(heldout_fraction * num_classes)`` ids are
    held out.

    Raises
    ------
    FedmetaError
        If the train pool would be empty; ``key`` names the option to fix.
    """
    n_heldout = round(heldout_fraction * num_classes)
    if n_heldout >= num_classes:
        raise FedmetaError(
            f"{key} = {heldout_fraction} leaves no training classes out of {num_classes}; "
            f"lower {key} or raise the number of classes"
        )
    ids = np.arange(num_classes, dtype=np.int64)
    return ids[: num_classes - n_heldout], ids[num_classes - n_heldout :]


def check_role(role: str) -> str:
    """Return ``role`` if it is ``"train"`` or ``"heldout"``, else raise ``ValueError``."""
    if role not in ("train", "heldout"):
        raise ValueError(f"unknown pool role {role!r}; expected 'train' or 'heldout'")
    return role

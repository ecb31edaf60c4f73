"""``omniglot``: 1623 handwritten characters from 50 alphabets, 20 drawers each.

Lake, Salakhutdinov and Tenenbaum (2015), "Human-level concept learning through probabilistic
program induction", Science 350(6266). Reads torchvision's root layout,
``<root>/omniglot-py/images_{background,evaluation}.zip`` or the extracted folders
``<root>/omniglot-py/images_background/<Alphabet>/characterKK/NNNN_DD.png``, without
torchvision's MD5 check. ``NNNN`` is the global character id (1-964 background, 965-1623
evaluation) and ``DD`` the drawer.

Images are resized to ``image-size`` (28) with an area (box) filter, ink = 1. The background
characters form the ``"train"`` pool and the evaluation characters (unseen alphabets) the
``"heldout"`` pool. With ``rotations = true`` the train pool also holds each background character
rotated by 90, 180 and 270 degrees as new classes (Santoro et al., 2016; Finn et al., 2017).
Decoded images are cached once as an npz in the user cache folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import Field

from fedmeta.data import DATASETS
from fedmeta.data.base import DatasetOptions, DataSource, cache_dir, check_role, resolve_root
from fedmeta.errors import FedmetaError

SPLITS = ("images_background", "images_evaluation")
N_BACKGROUND, N_TOTAL, N_DRAWERS = 964, 1623, 20
_NAME = re.compile(r"images_(?:background|evaluation)/([^/]+)/character\d+/(\d{4})_(\d{2})\.png$")


def _has_split(base: Path, split: str) -> bool:
    return (base / f"{split}.zip").is_file() or (base / split).is_dir()


def _exists(root: Path) -> bool:
    return all(_has_split(root / "omniglot-py", s) for s in SPLITS)


def _files(base: Path, split: str) -> Iterator[tuple[str, bytes]]:
    """``(relative path, PNG bytes)`` of one split, from the zip or the extracted folder."""
    if (base / split).is_dir():
        for path in sorted((base / split).rglob("*.png")):
            yield path.relative_to(base).as_posix(), path.read_bytes()
        return
    with zipfile.ZipFile(base / f"{split}.zip") as zf:
        for name in sorted(zf.namelist()):
            if name.endswith(".png"):
                yield name, zf.read(name)


def _fingerprint(base: Path, size: int) -> str:
    parts = [str(size)]
    for split in SPLITS:
        p = base / f"{split}.zip"
        p = p if p.is_file() else base / split
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def decode(base: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode every PNG: uint8 images ``(1623, 20, size, size)`` (255 = ink) and the alphabet
    name of each class."""
    from PIL import Image

    images = np.zeros((N_TOTAL, N_DRAWERS, size, size), dtype=np.uint8)
    alphabet = np.empty(N_TOTAL, dtype=object)
    seen = np.zeros((N_TOTAL, N_DRAWERS), dtype=bool)
    for split in SPLITS:
        for name, data in _files(base, split):
            m = _NAME.search(name)
            if m is None:
                continue
            c, d = int(m.group(2)) - 1, int(m.group(3)) - 1
            with Image.open(io.BytesIO(data)) as img:
                ink = Image.eval(img.convert("L"), lambda v: 255 - v)
                images[c, d] = np.asarray(ink.resize((size, size), Image.Resampling.BOX))
            alphabet[c], seen[c, d] = m.group(1), True
    if not seen.all():
        missing = int((~seen).sum())
        raise FedmetaError(
            f"omniglot root {base.parent} is incomplete ({missing} of {seen.size} images "
            f"missing); re-download it or point data.root at a complete copy"
        )
    return images, alphabet.astype(str)


def load_arrays(root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded arrays, from the npz cache when present (written atomically otherwise)."""
    base = root / "omniglot-py"
    cache = cache_dir() / f"omniglot-{size}px-{_fingerprint(base, size)}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["images"], z["alphabet"]
    images, alphabet = decode(base, size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, images=images, alphabet=alphabet)
    os.replace(tmp, cache)
    return images, alphabet


class OmniglotSource(DataSource):
    """Omniglot classes; ids ``0..1622`` are the characters (global id - 1), and with rotations
    ids ``1623 + (k - 1) * 964 + b`` are background character ``b`` rotated by ``k * 90``
    degrees."""

    def __init__(self, images: np.ndarray, alphabet: np.ndarray, rotations: bool) -> None:
        self.images, self.alphabet, self.rotations = images, alphabet, rotations
        size = images.shape[-1]
        self.feature_shape = (1, size, size)
        self.num_classes = N_TOTAL + (3 * N_BACKGROUND if rotations else 0)
        train = np.arange(N_BACKGROUND)
        if rotations:
            train = np.concatenate([train, np.arange(N_TOTAL, self.num_classes)])
        self._pools = {"train": train, "heldout": np.arange(N_BACKGROUND, N_TOTAL)}

    def decode_id(self, c: int) -> tuple[int, int]:
        """``(character, quarter turns)`` of class ``c``."""
        if c < N_TOTAL:
            return c, 0
        k, b = divmod(c - N_TOTAL, N_BACKGROUND)
        return b, k + 1

    def pool(self, role: str) -> np.ndarray:
        return self._pools[check_role(role)]

    def num_examples(self, c: int) -> int:
        return N_DRAWERS

    def examples(self, c: int, idx: np.ndarray) -> tuple[np.ndarray, None]:
        base, turns = self.decode_id(int(c))
        x = self.images[base, np.asarray(idx)]
        if turns:
            x = np.rot90(x, k=turns, axes=(1, 2))
        return (x.astype(np.float32) / 255.0)[:, None], None

    def groups(self, role: str) -> dict[str, np.ndarray]:
        out: dict[str, list[int]] = {}
        for c in self.pool(role):
            out.setdefault(str(self.alphabet[self.decode_id(int(c))[0]]), []).append(int(c))
        return {k: np.array(v, dtype=np.int64) for k, v in out.items()}


@DATASETS.register("omniglot", help="Omniglot characters (Lake et al., 2015), 28x28, by alphabet")
class Omniglot:
    """Omniglot from a torchvision-layout root (zipped or extracted), no MD5 check."""

    class Options(DatasetOptions):
        rotations: bool = Field(True, description="add 90/180/270-degree rotated train classes")
        image_size: int = Field(28, ge=8, le=105, description="image side in pixels")

    @staticmethod
    def build(options: Options, root: str | None, seed: int, download: bool) -> OmniglotSource:
        """Find the root (scenario key, ``$FEDMETA_DATA/omniglot``, user cache), download it
        into the cache with torchvision if asked, decode (cached) and wrap it."""
        try:
            path = resolve_root("omniglot", root, _exists)
        except FedmetaError:
            if not download or root:
                raise
            path = _download()
        images, alphabet = load_arrays(path, options.image_size)
        return OmniglotSource(images, alphabet, options.rotations)


def _download() -> Path:
    from torchvision.datasets import Omniglot as TVOmniglot

    path = cache_dir() / "omniglot"
    for background in (True, False):
        TVOmniglot(str(path), background=background, download=True)
    return path

"""``omniglot``: 1623 handwritten characters from 50 alphabets, 20 drawers each.

Lake, Salakhutdinov and Tenenbaum (2015), "Human-level concept learning through probabilistic
program induction", Science 350(6266). The 964 characters of the 30 *background* alphabets form
the ``"train"`` pool and the 659 characters of the 20 *evaluation* alphabets the ``"heldout"``
pool. As in MAML (Finn, Abbeel and Levine, 2017), images are downsized to 28x28 and, by default,
the train pool also holds the 90/180/270-degree rotations of every background character as new
classes (rotations are applied on the fly; only the 1623 base classes are stored).

The root is torchvision's layout, ``<root>/omniglot-py/images_{background,evaluation}.zip`` or the
extracted folders ``images_*/<Alphabet>/characterKK/NNNN_DD.png``; no checksum is required. The
decoded, resized images are cached as an npz in :func:`~fedmeta.data.base.cache_dir` and in
memory, so only the first build reads the PNGs.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import Field

from fedmeta.data.base import (
    DATASETS,
    DatasetOptions,
    DataSource,
    cache_dir,
    check_role,
    resolve_root,
)
from fedmeta.errors import FedmetaError
from fedmeta.results import atomic_write_bytes

SPLITS = ("images_background", "images_evaluation")
CACHE_VERSION = 2
_MEMORY: dict[str, dict[str, np.ndarray]] = {}


class OmniglotSource(DataSource):
    """Omniglot classes.

    Base ids ``0..963`` are the background characters and ``964..1622`` the evaluation ones, in
    the order of the global character ids ``NNNN`` of the file names (class ``c`` is
    ``NNNN = c + 1``; class 0 is Arcadian's first character). With rotations, ids
    ``1623 + (k - 1) * 964 + b`` are background character ``b`` turned ``k * 90`` degrees
    counter-clockwise (``np.rot90(image, k)``), ``k = 1, 2, 3``.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``(1623, 20, S, S)``, 255 = full ink.
    alphabets : numpy.ndarray
        Alphabet name of every base class.
    n_background : int
        Number of background (train) base classes.
    rotations : bool
        Add the rotated background classes to the train pool.
    """

    def __init__(
        self, images: np.ndarray, alphabets: np.ndarray, n_background: int, rotations: bool
    ) -> None:
        self._images = images
        self._alphabets = alphabets
        self._n_base = images.shape[0]
        self._n_background = n_background
        self.rotations = rotations
        self.feature_shape = (1, *images.shape[2:])
        self.num_classes = self._n_base + (3 * n_background if rotations else 0)
        base_train = np.arange(n_background, dtype=np.int64)
        rotated = np.arange(self._n_base, self.num_classes, dtype=np.int64)
        self._pools = {
            "train": np.concatenate([base_train, rotated]),
            "heldout": np.arange(n_background, self._n_base, dtype=np.int64),
        }

    def base_class(self, c: int) -> tuple[int, int]:
        """``(base class id, quarter turns)`` of class ``c``."""
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class {c} out of range 0..{self.num_classes - 1}")
        if c < self._n_base:
            return c, 0
        k, b = divmod(c - self._n_base, self._n_background)
        return b, k + 1

    def pool(self, role: str) -> np.ndarray:
        return self._pools[check_role(role)]

    def num_examples(self, c: int) -> int:
        return self._images.shape[1]

    def examples(self, c: int, idx: np.ndarray) -> tuple[np.ndarray, None]:
        b, k = self.base_class(int(c))
        x = self._images[b, np.asarray(idx)].astype(np.float32) / 255.0
        if k:
            x = np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1)))
        return x[:, None], None

    def groups(self, role: str) -> dict[str, np.ndarray]:
        """Alphabet name -> class ids of the pool (rotated copies belong to their alphabet)."""
        ids = self.pool(role)
        names = self._alphabets[[self.base_class(int(c))[0] for c in ids]]
        return {str(a): ids[names == a] for a in np.unique(names)}


@DATASETS.register("omniglot", help="Omniglot (Lake et al. 2015): 1623 characters, 50 alphabets")
class Omniglot:
    """Omniglot characters: background alphabets train, evaluation alphabets are held out."""

    class Options(DatasetOptions):
        rotations: bool = Field(
            True, description="add 90/180/270-degree rotations of train characters as classes"
        )
        image_size: int = Field(28, ge=8, le=105, description="image side in pixels")

    @staticmethod
    def build(options: Options, root: str | None, seed: int, download: bool) -> OmniglotSource:
        """Load (and on first use preprocess) Omniglot; ``seed`` is unused (fixed data set).

        Raises
        ------
        FedmetaError
            If the data is not found (and not downloaded).
        """
        try:
            found = resolve_root("omniglot", root, _has_data)
        except FedmetaError:
            if not download:
                raise
            _download(Path(root).expanduser() if root else cache_dir() / "omniglot")
            found = resolve_root("omniglot", root, _has_data)
        arrays = load_arrays(found, options.image_size)
        return OmniglotSource(
            arrays["images"], arrays["alphabets"], int(arrays["n_background"]), options.rotations
        )


def _split_path(root: Path, split: str) -> Path | None:
    """The extracted folder or the zip of ``split`` under ``root/omniglot-py``, if present."""
    base = root / "omniglot-py"
    if (base / split).is_dir():
        return base / split
    if (base / f"{split}.zip").is_file():
        return base / f"{split}.zip"
    return None


def _has_data(root: Path) -> bool:
    return all(_split_path(root, s) is not None for s in SPLITS)


def _download(root: Path) -> None:
    """Download both splits with torchvision (checksummed upstream zips) into ``root``."""
    from torchvision.datasets import Omniglot as TorchvisionOmniglot

    try:
        for background in (True, False):
            TorchvisionOmniglot(str(root), background=background, download=True)
    except Exception as e:  # network errors come in many types
        raise FedmetaError(
            f"data.download = true but downloading omniglot into {root} failed ({e}); "
            f"download it by hand or set data.root to a folder holding omniglot-py/"
        ) from None


def _fingerprint(root: Path) -> str:
    """Hash of the source files' names, sizes and modification times."""
    h = hashlib.sha256()
    for split in SPLITS:
        path = _split_path(root, split)
        assert path is not None
        files = [path] if path.is_file() else sorted(path.rglob("*.png"))
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_arrays(root: Path, size: int) -> dict[str, np.ndarray]:
    """Images ``(1623, 20, size, size)`` uint8, alphabet names and ``n_background`` for ``root``,
    from memory, the npz cache, or by decoding the PNGs (then cached)."""
    key = f"omniglot-v{CACHE_VERSION}-{size}px-{_fingerprint(root)}"
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / "preprocessed" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    else:
        arrays = _preprocess(root, size)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())
    _MEMORY[key] = arrays
    return arrays


def _members(path: Path) -> list[tuple[str, str, bytes | Path]]:
    """``(alphabet, character, png)`` of every image of one split, sorted by file name
    ``NNNN_DD.png`` (global character id, then drawer), the same for the zip and the folder."""
    if path.is_dir():
        found = [((f.name, f.parent.parent.name, f.parent.name), f) for f in path.glob("*/*/*.png")]
    else:
        with zipfile.ZipFile(path) as z:
            found = [
                ((n.split("/")[-1], *n.split("/")[-3:-1]), z.read(n))
                for n in z.namelist()
                if n.endswith(".png")
            ]
    return [(a, c, png) for (_, a, c), png in sorted(found, key=lambda item: item[0])]


def _preprocess(root: Path, size: int) -> dict[str, np.ndarray]:
    """Decode, invert (ink = 255) and box-filter every PNG to ``size`` x ``size``."""
    images, alphabets, counts = [], [], []
    for split in SPLITS:
        path = _split_path(root, split)
        assert path is not None
        classes: dict[tuple[str, str], list[np.ndarray]] = {}
        for alphabet, character, png in _members(path):
            src = io.BytesIO(png) if isinstance(png, bytes) else png
            with Image.open(src) as im:
                ink = 255 - np.asarray(im.convert("L"))
            small = Image.fromarray(ink).resize((size, size), Image.Resampling.BOX)
            classes.setdefault((alphabet, character), []).append(np.asarray(small))
        lengths = {len(v) for v in classes.values()}
        if len(lengths) != 1:
            raise FedmetaError(
                f"omniglot data under {path} is incomplete (examples per character: "
                f"{sorted(lengths)}); point data.root at a complete copy"
            )
        images += [np.stack(v) for v in classes.values()]
        alphabets += [a for a, _ in classes]
        counts.append(len(classes))
    return {
        "images": np.stack(images),
        "alphabets": np.array(alphabets),
        "n_background": np.array(counts[0]),
    }

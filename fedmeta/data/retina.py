"""RetinaMNIST (MedMNIST v2): fundus images graded 0-4 for diabetic retinopathy.

Yang et al. (2023), "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical
image classification", Scientific Data 10:41. Reads MedMNIST's ``retinamnist.npz`` (3x28x28
RGB, official layout with ``train/val/test_images`` and ``_labels``) from the ``medmnist``
root, which is where the ``medmnist`` package keeps it.

Held-out hospitals see new *patients*, not new grades: the train and validation images form the
train pool, with class id = grade (0-4), and the test images the held-out pool, with class id
``5 + grade``. Split the train pool among hospitals with a label split (``partition.name =
"label-split"``, ``classes-per-client``, ``divide = true``: each hospital sees only some grades),
and use ``task.label-order = "sorted"`` so that positions keep the grade order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmeta.data.arrays import ArraySource
from fedmeta.data.base import DATASETS, DatasetOptions, resolve_root
from fedmeta.errors import FedmetaError

FILE = "retinamnist.npz"
GRADES = 5


def _has_data(root: Path) -> bool:
    return (root / FILE).exists()


@DATASETS.register("retinamnist", help="RetinaMNIST: 1600 fundus images, 5 grades (MedMNIST)")
class RetinaMNIST:
    """RetinaMNIST with held-out patients (see the module docstring)."""

    class Options(DatasetOptions):
        pass

    @staticmethod
    def build(options: Options, root: str | None, seed: int, download: bool) -> ArraySource:
        """Load ``retinamnist.npz``; ``seed`` is unused."""
        try:
            found = resolve_root("medmnist", root, _has_data)
        except FedmetaError:
            if not download:
                raise
            from medmnist import RetinaMNIST as Downloader  # optional package

            target = Path(root) if root else Path.home() / ".cache" / "fedmeta" / "medmnist"
            target.mkdir(parents=True, exist_ok=True)
            Downloader(split="train", root=str(target), download=True)
            found = resolve_root("medmnist", str(target), _has_data)
        d = np.load(found / FILE)
        x = np.concatenate([d[f"{s}_images"] for s in ("train", "val", "test")])
        grade = np.concatenate([d[f"{s}_labels"].ravel() for s in ("train", "val", "test")])
        n_test = len(d["test_labels"])
        cls = grade.astype(np.int64) + np.r_[np.zeros(len(x) - n_test), np.full(n_test, GRADES)]
        images = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        pools = {"train": np.arange(GRADES), "heldout": np.arange(GRADES, 2 * GRADES)}
        return ArraySource(images, cls.astype(np.int64), pools)

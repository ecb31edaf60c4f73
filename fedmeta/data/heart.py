"""UCI Heart Disease from four hospitals: a natural per-hospital split of tabular data.

Janosi, Steinbrunn, Pfisterer and Detrano (1988), "Heart Disease", UCI Machine Learning
Repository (doi:10.24432/C52P4X); the federated version of Ogier du Terrail et al. (2022),
"FLamby: Datasets and Benchmarks for Cross-Silo Federated Learning in Realistic Healthcare
Settings", NeurIPS Datasets and Benchmarks.

Reads the four ``processed.<hospital>.data`` files (UCI's layout) from the ``heart_disease``
root. Preprocessing follows FLamby's: columns ``slope``, ``ca`` and ``thal`` dropped, label
``num > 0``, ``cp`` and ``restecg`` one-hot with the first level dropped (13 features), each
hospital z-normalised with its own mean and standard deviation. One deviation: FLamby drops rows
with a missing value, which leaves Switzerland a single healthy patient; here missing values are
imputed by the hospital's mean (0 after normalisation), keeping all 920 patients
(Switzerland: 8 healthy, 115 with disease); a resting blood pressure or cholesterol of 0 (all of
Switzerland's cholesterol, 49 VA rows) is treated as missing too. Each hospital's statistics
use all its patients, the held-out hospital's query patients included (a mild optimism).

Classes are (hospital, label) pairs, id ``2 * hospital + label``, and each hospital is a group.
The ``heldout`` hospital's two classes form the held-out pool: leave-one-hospital-out, with
``clients.heldout = 1`` and ``clients.train = 3`` (``partition.by = "group"``: one hospital per
training client). Use ``task.n-way = 2`` and ``task.label-order = "sorted"`` so that position 0
always means "no disease" and 1 "disease".
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from fedmeta.data.arrays import ArraySource
from fedmeta.data.base import DATASETS, DatasetOptions, resolve_root
from fedmeta.errors import FedmetaError

HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")


def _has_data(root: Path) -> bool:
    return all((root / f"processed.{h}.data").exists() for h in HOSPITALS)


def load_hospital(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(n, 13)`` (float32, z-normalised, missing -> 0) and labels ``(n,)``."""
    raw = np.genfromtxt(path, delimiter=",", missing_values="?", filling_values=np.nan)
    raw = raw.reshape(-1, 14)
    for col in (3, 4):  # resting blood pressure 0 and cholesterol 0 mean "not measured"
        raw[raw[:, col] == 0, col] = np.nan
    cp, restecg = raw[:, 2], raw[:, 6]
    dummies = [np.where(np.isnan(cp), np.nan, cp == v) for v in (2, 3, 4)]
    dummies += [np.where(np.isnan(restecg), np.nan, restecg == v) for v in (1, 2)]
    cols = [raw[:, 0], raw[:, 1], *dummies[:3], raw[:, 3], raw[:, 4], raw[:, 5], *dummies[3:]]
    cols += [raw[:, 7], raw[:, 8], raw[:, 9]]
    x = np.stack(cols, axis=1).astype(np.float64)
    with warnings.catch_warnings():  # a hospital may never measure a feature (Switzerland:
        warnings.simplefilter("ignore", RuntimeWarning)  # cholesterol): mean nan -> 0 below
        mean = np.nanmean(x, axis=0)
        std = np.nanstd(x, axis=0)
    x = (x - np.nan_to_num(mean)) / np.where(np.nan_to_num(std) > 1e-8, std, 1.0)
    return np.nan_to_num(x, nan=0.0).astype(np.float32), (raw[:, 13] > 0).astype(np.int64)


@DATASETS.register("heart-disease", help="UCI Heart Disease, 4 hospitals; leave one hospital out")
class HeartDisease:
    """Tabular data with a natural split by hospital (see the module docstring)."""

    class Options(DatasetOptions):
        heldout: Literal["cleveland", "hungarian", "switzerland", "va"] = "switzerland"

    @staticmethod
    def build(options: Options, root: str | None, seed: int, download: bool) -> ArraySource:
        """Load the four hospitals' files; ``seed`` and ``download`` are unused."""
        if download:
            raise FedmetaError(
                "data.download is not supported for heart-disease; place the four UCI "
                "processed.<hospital>.data files in a heart_disease/ folder"
            )
        found = resolve_root("heart_disease", root, _has_data)
        xs, ids = [], []
        for h, name in enumerate(HOSPITALS):
            x, y = load_hospital(found / f"processed.{name}.data")
            xs.append(x)
            ids.append(2 * h + y)
        groups = {name: np.array([2 * h, 2 * h + 1]) for h, name in enumerate(HOSPITALS)}
        held = {options.heldout: groups.pop(options.heldout)}
        return ArraySource(
            np.concatenate(xs),
            np.concatenate(ids),
            {"train": np.concatenate(list(groups.values())), "heldout": held[options.heldout]},
            {"train": groups, "heldout": held},
        )

"""Tests of the data sources: synthetic characters, Omniglot and sinusoid regression.

The Omniglot tests need the real data (``$FEDMETA_DATA/omniglot`` or ``../shared/data/omniglot``
next to the repository) and are skipped without it. Decoding the 32,460 PNGs takes several
seconds, so it happens once per session into a shared cache folder.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import fedmeta.data.omniglot as omniglot_module
from fedmeta.data import DATASETS, DataSource
from fedmeta.errors import FedmetaError
from fedmeta.tasks import CLASSIFICATION, REGRESSION

REPO = Path(__file__).resolve().parents[1]


def build(name: str, seed: int = 0, root: str | None = None, **options) -> DataSource:
    spec = DATASETS.get(name)
    return spec.build(spec.Options.model_validate(options), root, seed, False)


def all_examples(src: DataSource, c: int) -> np.ndarray:
    return src.examples(c, np.arange(src.num_examples(c)))[0]


def check_pools(src: DataSource) -> None:
    train, heldout = src.pool("train"), src.pool("heldout")
    assert train.dtype == heldout.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(heldout) > 0)
    assert not set(train) & set(heldout)
    assert sorted([*train, *heldout]) == list(range(src.num_classes))


# -- registry and options ------------------------------------------------------------------


def test_registry_and_kebab_options() -> None:
    for name in DATASETS.names():  # every source: described, with options and a builder
        spec = DATASETS.get(name)
        assert DATASETS.describe(name) and callable(spec.build) and spec.Options() is not None
    options = DATASETS.get("synthetic").Options.model_validate({"num-classes": 12})
    assert options.num_classes == 12 and options.examples_per_class == 20
    with pytest.raises(ValidationError, match="num-class"):
        DATASETS.get("synthetic").Options.model_validate({"num-class": 12})
    with pytest.raises(ValidationError):
        DATASETS.get("synthetic").Options.model_validate({"num-classes": 0})
    with pytest.raises(ValidationError):
        options.num_classes = 3  # frozen
    assert DATASETS.get("omniglot").Options().model_dump(by_alias=True) == {
        "rotations": True,
        "image-size": 28,
    }


def test_heldout_fraction_leaving_no_train_classes_is_a_user_error() -> None:
    with pytest.raises(FedmetaError, match="data.heldout-fraction"):
        build("synthetic", num_classes=2, heldout_fraction=0.9)


# -- synthetic -----------------------------------------------------------------------------


def test_synthetic_shapes_range_and_pools() -> None:
    src = build("synthetic")
    assert src.kind is CLASSIFICATION and src.feature_shape == (1, 28, 28)
    assert src.num_classes == 400 and src.num_examples(7) == 20
    check_pools(src)
    assert list(src.pool("heldout")) == list(range(320, 400))
    x, y = src.examples(5, np.array([3, 0, 3]))
    assert y is None and x.shape == (3, 1, 28, 28) and x.dtype == np.float32
    assert np.array_equal(x[0], x[2]) and not np.array_equal(x[0], x[1])
    images = np.stack([all_examples(src, c) for c in range(0, 400, 7)])
    assert images.min() == 0.0 and images.max() == 1.0
    ink = images.mean(axis=(2, 3, 4))
    assert 0.02 < ink.mean() < 0.3 and ink.min() > 0.005  # ink on background, never blank
    assert src.groups("train") is None


def test_synthetic_is_deterministic_by_seed() -> None:
    a, b, c = build("synthetic", seed=3), build("synthetic", seed=3), build("synthetic", seed=4)
    for k in (0, 77, 399):
        assert np.array_equal(all_examples(a, k), all_examples(b, k))
        assert not np.array_equal(all_examples(a, k), all_examples(c, k))
    # A class does not depend on the number of classes or on the access order.
    small = build("synthetic", seed=3, num_classes=70)
    assert np.array_equal(all_examples(small, 69), all_examples(a, 69))
    # Different classes look different.
    assert np.abs(all_examples(a, 0) - all_examples(a, 1)).mean() > 0.05


def test_synthetic_many_classes_fast() -> None:
    src = build("synthetic", num_classes=5000, examples_per_class=5, image_size=20)
    for c in (0, 1234, 3999, 4000, 4999):
        assert src.examples(c, np.arange(5))[0].shape == (5, 1, 20, 20)
    check_pools(src)
    assert len(src.pool("heldout")) == 1000 and src.pool("heldout")[0] == 4000
    with pytest.raises(IndexError):
        src.examples(5000, np.arange(2))
    start = time.perf_counter()
    src = build("synthetic", num_classes=1000)
    for c in range(1000):
        src.examples(c, np.arange(20))
    assert time.perf_counter() - start < 10.0  # about 0.5 s on an idle core


# -- sinusoid ------------------------------------------------------------------------------


def test_sinusoid_targets_and_determinism() -> None:
    src = build("sinusoid", seed=1)
    assert src.kind is REGRESSION and src.feature_shape == (1,)
    assert src.num_classes == 1000 and src.num_examples(0) == 100
    check_pools(src)
    assert len(src.pool("heldout")) == 200
    x, y = src.examples(17, np.arange(100))
    assert x.shape == y.shape == (100, 1) and x.dtype == y.dtype == np.float32
    assert np.all((x >= -5) & (x <= 5))
    expected = src.amplitude[17] * np.sin(x.astype(np.float64) - src.phase[17])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert np.all((src.amplitude >= 0.1) & (src.amplitude <= 5.0))
    assert np.all((src.phase >= 0.0) & (src.phase <= np.pi))
    x2, y2 = build("sinusoid", seed=1).examples(17, np.array([5, 2]))
    assert np.array_equal(x2, x[[5, 2]]) and np.array_equal(y2, y[[5, 2]])
    x3, _ = build("sinusoid", seed=2).examples(17, np.arange(100))
    assert not np.array_equal(x3, x)


# -- omniglot ------------------------------------------------------------------------------


def _omniglot_data() -> Path | None:
    candidates = [REPO.parent / "shared" / "data"]
    if os.environ.get("FEDMETA_DATA"):
        candidates.insert(0, Path(os.environ["FEDMETA_DATA"]))
    for data in candidates:
        if (data / "omniglot" / "omniglot-py" / "images_background.zip").is_file():
            return data
    return None


@pytest.fixture(scope="session")
def omniglot_session_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for Omniglot builds: the data folder and a cache shared by the session,
    filled by one first build."""
    data = _omniglot_data()
    if data is None:
        pytest.skip("Omniglot data not found: set FEDMETA_DATA to the folder holding omniglot/")
    env = {"FEDMETA_DATA": str(data), "FEDMETA_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        build("omniglot")
    return env


@pytest.fixture
def omniglot(omniglot_session_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> DataSource:
    for k, v in omniglot_session_env.items():
        monkeypatch.setenv(k, v)
    return build("omniglot")


def test_omniglot_pools_and_images(omniglot: DataSource) -> None:
    assert omniglot.kind is CLASSIFICATION and omniglot.feature_shape == (1, 28, 28)
    check_pools(omniglot)
    assert len(omniglot.pool("train")) == 964 * 4 and len(omniglot.pool("heldout")) == 659
    assert omniglot.num_examples(0) == 20
    x = np.concatenate([all_examples(omniglot, c) for c in range(0, 1623, 20)])
    assert x.shape[1:] == (1, 28, 28) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0 and x.mean() < 0.2  # ink 1 on background 0
    plain = build("omniglot", rotations=False)
    assert len(plain.pool("train")) == 964 and plain.num_classes == 1623
    assert np.array_equal(all_examples(plain, 1000), all_examples(omniglot, 1000))


def test_omniglot_rotations_and_groups(omniglot: DataSource) -> None:
    for base in (0, 500, 963):
        image = all_examples(omniglot, base)
        for k in (1, 2, 3):
            rotated = all_examples(omniglot, 1623 + (k - 1) * 964 + base)
            assert np.array_equal(rotated, np.rot90(image, k, axes=(-2, -1)))
    train, heldout = omniglot.groups("train"), omniglot.groups("heldout")
    assert len(train) == 30 and len(heldout) == 20
    assert sum(len(v) for v in train.values()) == 3856
    assert len(train["Latin"]) == 26 * 4 and len(heldout["Angelic"]) == 20
    # Class c is global character id c + 1 (Arcadian 1-26, ..., Angelic 965-984, ULOG 1598-1623).
    assert list(train["Arcadian"][:26]) == list(range(26))
    assert list(heldout["Angelic"]) == list(range(964, 984))
    assert list(heldout["ULOG"]) == list(range(1597, 1623))
    latin = train["Latin"]
    assert set((latin[latin >= 1623] - 1623) % 964) == set(latin[latin < 964])
    assert sorted(np.concatenate(list(heldout.values()))) == list(omniglot.pool("heldout"))


def test_omniglot_npz_cache(
    omniglot_session_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in omniglot_session_env.items():
        monkeypatch.setenv(k, v)
    files = list((Path(omniglot_session_env["FEDMETA_CACHE"]) / "preprocessed").glob("*.npz"))
    assert len(files) == 1 and "28px" in files[0].name
    monkeypatch.setattr(omniglot_module, "_MEMORY", {})  # force a load from disk
    start = time.perf_counter()
    src = build("omniglot")
    assert time.perf_counter() - start < 5.0  # about 0.2 s
    assert src.num_classes == 1623 + 3 * 964


def test_omniglot_zip_and_extracted_layouts_agree(
    omniglot: DataSource, omniglot_session_env: dict[str, str], tmp_path: Path
) -> None:
    """A small extracted root (three alphabets) yields the same images as the zips."""
    source = Path(omniglot_session_env["FEDMETA_DATA"]) / "omniglot" / "omniglot-py"
    wanted = {
        "images_background": ("Blackfoot_(Canadian_Aboriginal_Syllabics)", "Latin"),
        "images_evaluation": ("Angelic",),
    }
    for split, alphabets in wanted.items():
        with zipfile.ZipFile(source / f"{split}.zip") as z:
            members = [n for n in z.namelist() if n.split("/")[1] in alphabets]
            z.extractall(tmp_path / "omniglot-py", members)
    small = build("omniglot", root=str(tmp_path))
    assert len(small.pool("heldout")) == 20 and len(small.pool("train")) == (14 + 26) * 4
    for role in ("train", "heldout"):
        for alphabet, ids in small.groups(role).items():
            full_ids = omniglot.groups(role)[alphabet]
            assert len(ids) == len(full_ids)
            for c, full_c in zip(ids[::7], full_ids[::7], strict=False):
                assert np.array_equal(all_examples(small, c), all_examples(omniglot, full_c))


def test_omniglot_missing_root_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FedmetaError, match="data.root"):
        build("omniglot", root=str(tmp_path / "nowhere"))
    monkeypatch.delenv("FEDMETA_DATA", raising=False)
    monkeypatch.setenv("FEDMETA_CACHE", str(tmp_path))
    with pytest.raises(FedmetaError, match="data.root") as info:
        build("omniglot")
    assert "\n" not in str(info.value) and "FEDMETA_DATA" in str(info.value)

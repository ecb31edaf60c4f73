"""Data sources, resolved by name through :data:`DATASETS`.

Every entry is a *dataset spec*: a class with a pydantic ``Options`` model (the scenario's
kebab-case keys, validated) and ``build(options, root, seed, download) -> DataSource``.
"""

from fedmeta.data.base import DatasetOptions, DataSource, cache_dir, resolve_root
from fedmeta.registry import Registry

DATASETS: Registry[type] = Registry("dataset")

__all__ = ["DATASETS", "DataSource", "DatasetOptions", "cache_dir", "resolve_root"]

# Imported last so that they can register themselves in DATASETS.
from fedmeta.data import heart, omniglot, retina, sinusoid, synthetic  # noqa: E402, F401

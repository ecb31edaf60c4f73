"""Data sources, resolved by name through :data:`DATASETS`.

Every entry is a *dataset spec*: a class with a pydantic ``Options`` model (the scenario's
kebab-case keys, validated) and ``build(options, root, seed, download) -> DataSource``. Each
module of this package registers its own; :data:`DATASETS` imports them all on first lookup, so a
new dataset is one new file.
"""

from fedmeta.data.base import DATASETS, DatasetOptions, DataSource, cache_dir, resolve_root

__all__ = ["DATASETS", "DataSource", "DatasetOptions", "cache_dir", "resolve_root"]

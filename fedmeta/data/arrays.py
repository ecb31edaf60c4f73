"""A data source over in-memory arrays: examples, their class ids, pools and groups."""

from __future__ import annotations

import numpy as np

from fedmeta.data.base import DataSource, check_role


class ArraySource(DataSource):
    """Examples ``x`` (float32, ``(N, *feature_shape)``) with class ids ``cls`` (``(N,)``).

    Parameters
    ----------
    x, cls : numpy.ndarray
        The examples and their class ids; ids need not be contiguous.
    pools : dict[str, numpy.ndarray]
        Class ids of the ``"train"`` and ``"heldout"`` pools (disjoint).
    groups : dict[str, dict[str, numpy.ndarray]], optional
        Per pool, a natural grouping of its classes (for example, hospitals).
    """

    def __init__(
        self,
        x: np.ndarray,
        cls: np.ndarray,
        pools: dict[str, np.ndarray],
        groups: dict[str, dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.feature_shape = tuple(self.x.shape[1:])
        self.num_classes = int(cls.max()) + 1
        self._index = {int(c): np.flatnonzero(cls == c) for c in np.unique(cls)}
        self._pools = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in pools.items()}
        self._groups = groups

    def pool(self, role: str) -> np.ndarray:
        return self._pools[check_role(role)]

    def num_examples(self, c: int) -> int:
        return len(self._index.get(int(c), ()))

    def examples(self, c: int, idx: np.ndarray) -> tuple[np.ndarray, None]:
        return self.x[self._index[int(c)][np.asarray(idx)]], None

    def groups(self, role: str) -> dict[str, np.ndarray] | None:
        return None if self._groups is None else self._groups[check_role(role)]

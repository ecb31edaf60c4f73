"""``sinusoid``: the regression toy of MAML (Finn, Abbeel and Levine, 2017, section 5.1).

Each "class" is one function ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]`` and phase
``phi ~ U[0, pi]``; its examples are points ``x ~ U[-5, 5]``. A task (``n-way = 1``) is K support
and Q query points of one function, scored by mean squared error.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fedmeta.data import DATASETS
from fedmeta.data.base import DatasetOptions, DataSource, check_role, split_pools
from fedmeta.tasks import REGRESSION


class SinusoidSource(DataSource):
    """A fixed table of sine functions and their sample points, deterministic by seed."""

    kind = REGRESSION
    feature_shape = (1,)

    def __init__(self, num_functions: int, examples: int, heldout_fraction: float, seed: int):
        rng = np.random.default_rng([seed, 0x51])
        self.num_classes = num_functions
        self.amplitude = rng.uniform(0.1, 5.0, num_functions)
        self.phase = rng.uniform(0.0, np.pi, num_functions)
        self.x = rng.uniform(-5.0, 5.0, (num_functions, examples)).astype(np.float32)
        train, heldout = split_pools(num_functions, heldout_fraction, "data.heldout-fraction")
        self._pools = {"train": train, "heldout": heldout}

    def pool(self, role: str) -> np.ndarray:
        return self._pools[check_role(role)]

    def num_examples(self, c: int) -> int:
        return self.x.shape[1]

    def examples(self, c: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.x[c, np.asarray(idx)]
        y = self.amplitude[c] * np.sin(x - self.phase[c])
        return x[:, None], y[:, None].astype(np.float32)


@DATASETS.register("sinusoid", help="sine regression (MAML's toy); task.n-way must be 1")
class Sinusoid:
    """Sine functions ``A sin(x - phi)``, one per class."""

    class Options(DatasetOptions):
        num_functions: int = Field(1000, ge=2, description="number of sine functions")
        examples_per_function: int = Field(100, ge=2, description="sample points per function")
        heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share held out")

    @staticmethod
    def build(options: Options, root: str | None, seed: int, download: bool) -> SinusoidSource:
        return SinusoidSource(
            options.num_functions, options.examples_per_function, options.heldout_fraction, seed
        )

"""``sinusoid``: few-shot regression of sine waves, MAML's toy problem.

Finn, Abbeel and Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML, section 5.1: every task is a sine ``y = A sin(x - phase)`` with amplitude
``A ~ U[0.1, 5]`` and phase ``~ U[0, pi]``, observed at inputs ``x ~ U[-5, 5]``.

Here each "class" is one such function, and its examples are a fixed, seeded table of points, so
that the usual class-based samplers and pools (disjoint train and held-out functions) apply.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fedmeta.data.base import DATASETS, DatasetOptions, DataSource, check_role, split_pools
from fedmeta.tasks import REGRESSION

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, np.pi)
X_RANGE = (-5.0, 5.0)


class SinusoidSource(DataSource):
    """Sine functions as classes; ``examples`` returns inputs ``(n, 1)`` and targets ``(n, 1)``.

    Parameters
    ----------
    num_functions : int
        Number of functions ("classes").
    examples_per_function : int
        Points per function.
    heldout_fraction : float
        Fraction of the functions, the highest ids, in the ``"heldout"`` pool.
    seed : int
        Data seed: amplitudes and phases come from ``default_rng(seed)``, the inputs of function
        ``c`` from ``default_rng([seed, c])``.
    """

    kind = REGRESSION
    feature_shape = (1,)

    def __init__(
        self, num_functions: int, examples_per_function: int, heldout_fraction: float, seed: int
    ) -> None:
        self.num_classes = num_functions
        self.examples_per_function = examples_per_function
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.amplitude = rng.uniform(*AMPLITUDE, size=num_functions)
        self.phase = rng.uniform(*PHASE, size=num_functions)
        train, heldout = split_pools(num_functions, heldout_fraction, "data.heldout-fraction")
        self._pools = {"train": train, "heldout": heldout}

    def pool(self, role: str) -> np.ndarray:
        return self._pools[check_role(role)]

    def num_examples(self, c: int) -> int:
        return self.examples_per_function

    def inputs(self, c: int) -> np.ndarray:
        """All ``examples_per_function`` inputs of function ``c`` (float64)."""
        if not 0 <= c < self.num_classes:
            raise IndexError(f"function {c} out of range 0..{self.num_classes - 1}")
        return np.random.default_rng([self.seed, c]).uniform(
            *X_RANGE, size=self.examples_per_function
        )

    def examples(self, c: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = int(c)
        x = self.inputs(c)[np.asarray(idx)]
        y = self.amplitude[c] * np.sin(x - self.phase[c])
        return x[:, None].astype(np.float32), y[:, None].astype(np.float32)


@DATASETS.register("sinusoid", help="MAML's sine-wave regression toy (no files)")
class Sinusoid:
    """Sine-wave regression: A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]."""

    class Options(DatasetOptions):
        num_functions: int = Field(1000, ge=2, description="number of sine functions")
        examples_per_function: int = Field(100, ge=1, description="points per function")
        heldout_fraction: float = Field(
            0.2, ge=0.0, lt=1.0, description="share of functions (highest ids) held out"
        )

    @staticmethod
    def build(options: Options, root: str | None, seed: int, download: bool) -> SinusoidSource:
        """Build the source; ``root`` and ``download`` are ignored (nothing to read)."""
        return SinusoidSource(
            options.num_functions,
            options.examples_per_function,
            options.heldout_fraction,
            seed,
        )

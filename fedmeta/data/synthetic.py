"""``synthetic``: procedurally drawn "characters", the embedded default data set (no files).

Each class is a character made of 2-4 pen strokes (cubic Bezier curves with random control
points); each example redraws it the way a different person would, in the spirit of Omniglot
(Lake, Salakhutdinov and Tenenbaum, 2015, "Human-level concept learning through probabilistic
program induction", Science): the control points are jittered, the whole character is warped by
a small random affine map (rotation, anisotropic scale, shear, shift) and drawn with a random pen
width. Images are single-channel, ink 1 on background 0, float32.

Everything is deterministic in the data seed and class id: class ``c`` is drawn from a generator
seeded with ``(seed, c)``, lazily on first use, so any number of classes is supported and each
class costs about 0.1 ms to render.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fedmeta.data.base import DataSource, DatasetOptions, check_role, split_pools

_POINTS_PER_STROKE = 40
_T = np.linspace(0.0, 1.0, _POINTS_PER_STROKE)
# Cubic Bernstein basis, (points, 4).
_BERNSTEIN = np.stack([(1 - _T) ** 3, 3 * _T * (1 - _T) ** 2, 3 * _T**2 * (1 - _T), _T**3], axis=1)
_BLUR_OFFSETS = np.arange(-2, 3)


class SyntheticSource(DataSource):
    """Stroke characters rendered on demand and memoised per class (as uint8).

    Parameters
    ----------
    num_classes : int
        Number of classes.
    examples_per_class : int
        Examples (renditions) of every class.
    heldout_fraction : float
        Fraction of classes, the highest ids, that form the ``"heldout"`` pool.
    image_size : int
        Side of the square images.
    seed : int
        Data seed.
    """

    def __init__(
        self,
        num_classes: int,
        examples_per_class: int,
        heldout_fraction: float,
        image_size: int,
        seed: int,
    ) -> None:
        self.num_classes = num_classes
        self.examples_per_class = examples_per_class
        self.image_size = image_size
        self.seed = seed
        self.feature_shape = (1, image_size, image_size)
        self._pools = dict(
            zip(
                ("train", "heldout"),
                split_pools(num_classes, heldout_fraction, "data.heldout-fraction"),
                strict=True,
            )
        )
        self._cache: dict[int, np.ndarray] = {}

    def pool(self, role: str) -> np.ndarray:
        return self._pools[check_role(role)]

    def num_examples(self, c: int) -> int:
        return self.examples_per_class

    def examples(self, c: int, idx: np.ndarray) -> tuple[np.ndarray, None]:
        images = self._class_images(int(c))
        x = images[np.asarray(idx)].astype(np.float32) / 255.0
        return x[:, None], None

    def _class_images(self, c: int) -> np.ndarray:
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class {c} out of range 0..{self.num_classes - 1}")
        images = self._cache.get(c)
        if images is None:
            rng = np.random.default_rng([self.seed, c])
            images = render_class(rng, self.examples_per_class, self.image_size)
            self._cache[c] = images
        return images


def _character(rng: np.random.Generator) -> np.ndarray:
    """Control points ``(strokes, 4, 2)`` of one character in ``[-1, 1]^2`` coordinates."""
    n_strokes = int(rng.integers(2, 5))
    strokes = []
    for _ in range(n_strokes):
        start = rng.uniform(-0.55, 0.55, size=2)
        heading = rng.uniform(0.0, 2 * np.pi)
        # A pen trajectory: three steps whose direction turns by a random amount each time.
        turns = heading + np.cumsum(np.r_[0.0, rng.normal(0.0, 1.1, size=2)])
        steps = rng.uniform(0.2, 0.5, size=(3, 1)) * np.stack([np.cos(turns), np.sin(turns)], 1)
        points = np.vstack([start, start + np.cumsum(steps, axis=0)])
        strokes.append(np.clip(points, -0.8, 0.8))
    return np.stack(strokes)


def render_class(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Draw one new character and ``n`` renditions of it.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness (the character, then the renditions).
    n : int
        Number of renditions.
    size : int
        Image side in pixels.

    Returns
    -------
    numpy.ndarray
        uint8 array ``(n, size, size)``; 255 is full ink.
    """
    ctrl = _character(rng)  # (S, 4, 2)
    s = ctrl.shape[0]
    # Per-rendition noise on every control point, then an affine warp of the whole character.
    ctrl = ctrl[None] + rng.normal(0.0, 0.05, size=(n, s, 4, 2))
    angle = rng.normal(0.0, 0.2, size=n)
    scale = rng.uniform(0.8, 1.1, size=(n, 2))
    shear = rng.normal(0.0, 0.12, size=n)
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    shr = np.zeros((n, 2, 2))
    shr[:, 0, 0] = shr[:, 1, 1] = 1.0
    shr[:, 0, 1] = shear
    affine = rot @ shr * scale[:, None, :]
    shift = rng.uniform(-0.1, 0.1, size=(n, 1, 2))
    pts = np.einsum("pk,nskd->nspd", _BERNSTEIN, ctrl).reshape(n, -1, 2)
    pts = np.einsum("nij,npj->npi", affine, pts) + shift
    # Splat the densely sampled pen positions into the grid with bilinear weights.
    xy = (pts + 1.0) * (0.5 * (size - 1))
    base = np.floor(xy)
    frac = xy - base
    base = base.astype(np.int64)
    flat = np.zeros(n * size * size)
    offset = (np.arange(n) * size * size)[:, None]
    for dx in (0, 1):
        for dy in (0, 1):
            col, row = base[..., 0] + dx, base[..., 1] + dy
            w = np.abs(1 - dx - frac[..., 0]) * np.abs(1 - dy - frac[..., 1])
            ok = (col >= 0) & (col < size) & (row >= 0) & (row < size)
            index = (offset + row * size + col)[ok]
            flat += np.bincount(index, weights=w[ok], minlength=n * size * size)
    canvas = flat.reshape(n, size, size)
    # Pen width: a separable Gaussian blur with a per-rendition width, then saturate the ink.
    sigma = rng.uniform(0.5, 0.9, size=(n, 1)) * size / 28.0
    kernel = np.exp(-0.5 * (_BLUR_OFFSETS[None] / sigma) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)
    pad = np.pad(canvas, ((0, 0), (2, 2), (2, 2)))
    canvas = sum(kernel[:, k, None, None] * pad[:, k : k + size, :] for k in range(5))
    canvas = sum(kernel[:, k, None, None] * canvas[:, :, k : k + size] for k in range(5))
    density = _POINTS_PER_STROKE / (0.4 * size)  # pen samples per pixel along a typical stroke
    ink = np.clip(canvas * (2.5 / density), 0.0, 1.0)
    return np.round(ink * 255.0).astype(np.uint8)

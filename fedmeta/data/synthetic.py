"""``synthetic``: procedurally drawn "characters", the embedded default data set (no files).

Each class is a character made of 2-4 pen strokes (cubic Bezier curves along a randomly turning
pen trajectory); each example redraws it the way a different person would, in the spirit of
Omniglot (Lake, Salakhutdinov and Tenenbaum, 2015, "Human-level concept learning through
probabilistic program induction", Science 350(6266)): every control point is jittered, the whole
character is warped by a small random affine map (rotation, anisotropic scale, shear, shift) and
drawn with a random pen weight. Images are single-channel, ink 1 on background 0, float32.

Everything is deterministic in the data seed and the class id: the random numbers of class ``c``
come from a generator seeded with ``(seed, c)``, so a class looks the same whatever the number of
classes. A class is rendered when first used, its renditions together with vectorised numpy
(about 1 ms for 20 on one core), and memoised as uint8. One class at a time, because a client's
classes are scattered over the ids: rendering blocks of 64 neighbours cost a client it had not
met before about 0.5 s.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fedmeta.data.base import DATASETS, DatasetOptions, DataSource, check_role, split_pools

_POINTS = 24  # pen positions sampled along every stroke
_T = np.linspace(0.0, 1.0, _POINTS)
_BERNSTEIN = np.stack([(1 - _T) ** 3, 3 * _T * (1 - _T) ** 2, 3 * _T**2 * (1 - _T), _T**3], 1)
_PEN_SIGMA = 0.7  # Gaussian pen profile, in pixels at 28x28
# How much renditions of one character differ (coordinates span [-1, 1]).
_POINT_SD = 0.06  # control-point noise
_ANGLE_SD = 0.22  # rotation, radians
_SHEAR_SD = 0.12
_SCALE = (0.75, 1.12)  # per-axis scale range
_SHIFT = 0.25  # maximal shift per axis
_SPAN = 1.4  # extent of a character along its longer side, before the warp


class SyntheticSource(DataSource):
    """Stroke characters rendered on demand.

    Parameters
    ----------
    num_classes, examples_per_class : int
        Number of classes and of examples (renditions) per class.
    heldout_fraction : float
        Fraction of the classes, the highest ids, that form the ``"heldout"`` pool.
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
        train, heldout = split_pools(num_classes, heldout_fraction, "data.heldout-fraction")
        self._pools = {"train": train, "heldout": heldout}
        self._rendered: dict[int, np.ndarray] = {}

    def pool(self, role: str) -> np.ndarray:
        return self._pools[check_role(role)]

    def num_examples(self, c: int) -> int:
        return self.examples_per_class

    def examples(self, c: int, idx: np.ndarray) -> tuple[np.ndarray, None]:
        c = int(c)
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class {c} out of range 0..{self.num_classes - 1}")
        if c not in self._rendered:  # one class at a time: a client's classes are scattered
            self._rendered[c] = render_classes(
                self.seed, range(c, c + 1), self.examples_per_class, self.image_size
            )[0]
        x = self._rendered[c][np.asarray(idx)].astype(np.float32) / 255.0
        return x[:, None], None


@DATASETS.register("synthetic", help="procedural stroke characters, 28x28 (embedded, no files)")
class Synthetic:
    """Procedural stroke characters: any number of classes, no files needed."""

    class Options(DatasetOptions):
        num_classes: int = Field(400, ge=2, description="number of character classes")
        examples_per_class: int = Field(20, ge=1, description="renditions of every class")
        heldout_fraction: float = Field(
            0.2, ge=0.0, lt=1.0, description="share of classes (highest ids) held out"
        )
        image_size: int = Field(28, ge=8, le=256, description="image side in pixels")

    @staticmethod
    def build(options: Options, root: str | None, seed: int, download: bool) -> SyntheticSource:
        """Build the source; ``root`` and ``download`` are ignored (nothing to read)."""
        return SyntheticSource(
            options.num_classes,
            options.examples_per_class,
            options.heldout_fraction,
            options.image_size,
            seed,
        )


def render_classes(seed: int, classes: range, n: int, size: int) -> np.ndarray:
    """Draw the characters ``classes`` and ``n`` renditions of each.

    Returns
    -------
    numpy.ndarray
        uint8 ``(len(classes), n, size, size)``; 255 is full ink.
    """
    # All randomness of class c comes from its own generator, in a fixed order.
    k, u_char, z_char, z_ex, u_ex = [], [], [], [], []
    for c in classes:
        rng = np.random.default_rng([seed, c])
        k.append(rng.integers(2, 5))
        u_char.append(rng.random((4, 6)))
        z_char.append(rng.standard_normal((4, 2)))
        z_ex.append(rng.standard_normal((n, 34)))
        u_ex.append(rng.random((n, 5)))
    u, z = np.stack(u_char), np.stack(z_char)
    ctrl = _characters(np.array(k), u, z)  # (B, 4, 4, 2)
    pts, gain = _renditions(ctrl, np.stack(z_ex), np.stack(u_ex))
    images = render(pts.reshape(-1, pts.shape[-2], 2), gain.reshape(-1), size)
    return images.reshape(len(classes), n, size, size)


def _characters(n_strokes: np.ndarray, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Control points ``(B, 4, 4, 2)`` from uniforms ``u (B, 4, 6)`` and normals ``z (B, 4, 2)``.

    Each stroke starts at a random point and takes three steps whose heading turns by a random
    angle each time. Characters with fewer than 4 strokes repeat their last stroke (drawing a
    stroke twice changes nothing once the ink saturates). The character is centred and scaled
    to span 1.4 (of 2) along its longer side, at most doubling it.
    """
    start = u[..., 0:2] - 0.5
    heading = 2 * np.pi * u[..., 2:3] + np.cumsum(
        np.concatenate([np.zeros_like(z[..., :1]), 1.1 * z], -1), -1
    )
    steps = (0.2 + 0.3 * u[..., 3:6])[..., None] * np.stack([np.cos(heading), np.sin(heading)], -1)
    ctrl = np.concatenate([start[:, :, None], start[:, :, None] + np.cumsum(steps, 2)], 2)
    keep = np.minimum(np.arange(4)[None], n_strokes[:, None] - 1)  # (B, 4)
    ctrl = np.take_along_axis(ctrl, keep[:, :, None, None], 1)
    lo, hi = ctrl.min((1, 2)), ctrl.max((1, 2))  # (B, 2)
    fit = np.minimum(2.0, _SPAN / (hi - lo).max(-1))[:, None, None, None]
    return (ctrl - ((lo + hi) / 2)[:, None, None]) * fit


def _renditions(ctrl: np.ndarray, z: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pen positions ``(B, n, 4 * points, 2)`` and ink gains ``(B, n)`` of ``n`` renditions,
    from normals ``z (B, n, 34)`` and uniforms ``u (B, n, 5)``."""
    b, n = z.shape[:2]
    ctrl = ctrl[:, None] + _POINT_SD * z[..., :32].reshape(b, n, 4, 4, 2)
    angle, shear = _ANGLE_SD * z[..., 32], _SHEAR_SD * z[..., 33]
    cos, sin = np.cos(angle), np.sin(angle)
    # Row-vector convention: p' = p @ (rotation @ shear).T * scale + shift.
    rows = [np.stack([cos, sin], -1), np.stack([shear * cos - sin, shear * sin + cos], -1)]
    m = np.stack(rows, -2)
    scale = (_SCALE[0] + (_SCALE[1] - _SCALE[0]) * u[..., 0:2])[:, :, None]
    shift = (_SHIFT * (2 * u[..., 2:4] - 1))[:, :, None]
    pts = np.matmul(_BERNSTEIN, ctrl).reshape(b, n, -1, 2)
    return np.matmul(pts, m) * scale + shift, 1.5 + 2.0 * u[..., 4]


def render(pts: np.ndarray, gain: np.ndarray, size: int) -> np.ndarray:
    """Rasterise pen positions.

    Parameters
    ----------
    pts : numpy.ndarray
        ``(m, points, 2)`` pen positions (x, y) in ``[-1, 1]^2``, densely sampled along strokes.
    gain : numpy.ndarray
        ``(m,)`` ink gains: higher values saturate a wider band around the stroke (bolder pen).
    size : int
        Image side in pixels.

    Returns
    -------
    numpy.ndarray
        uint8 ``(m, size, size)``; 255 is full ink.
    """
    m, g = pts.shape[0], size + 4  # a 2-pixel margin catches everything off the canvas
    xy = (pts + 1.0) * (0.5 * (size - 1)) + 2.0
    base = np.clip(np.floor(xy), 0, g - 2)
    frac = np.clip(xy - base, 0.0, 1.0)
    corner = (np.arange(m)[:, None] * g + base[..., 1].astype(np.int64)) * g + base[..., 0]
    index = (corner.astype(np.int64)[None] + np.array([0, 1, g, g + 1])[:, None, None]).ravel()
    fx, fy = frac[..., 0], frac[..., 1]
    weight = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]).ravel()
    flat = np.bincount(index, weight, minlength=m * g * g)  # bilinear splatting
    # Pen profile: separable Gaussian blur (one fixed matrix that also crops the margin).
    sigma = _PEN_SIGMA * size / 28.0
    d = np.arange(g)[:, None] - 2 - np.arange(size)[None]
    blur = np.exp(-0.5 * (d / sigma) ** 2)
    blur /= np.exp(-0.5 * (np.arange(-8, 9) / sigma) ** 2).sum()
    blur[:2] = blur[-2:] = 0.0
    canvas = (flat.reshape(m * g, g) @ blur).reshape(m, g, size)  # rows still padded
    canvas = blur.T @ canvas.transpose(1, 0, 2).reshape(g, m * size)  # (size, m * size)
    density = _POINTS / (0.4 * size)  # pen samples per pixel along a typical stroke
    ink = canvas.reshape(size, m, size).transpose(1, 0, 2) * (gain / density)[:, None, None]
    return (np.clip(ink, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

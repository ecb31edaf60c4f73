"""Training-time augmentation of image episodes: a small random affine distortion per image.

``[augment]`` in a scenario turns it on. Every image of every *training* episode (support and
query) gets its own distortion, drawn afresh each time the episode is sampled; held-out
clients' evaluation tasks are never distorted. The distortion composes

* a rotation by an angle drawn uniformly from ``[-rotation, rotation]`` degrees;
* a shear drawn from ``[-shear, shear]`` on each axis;
* a scale drawn from ``[1 - scale, 1 + scale]`` on each axis;
* a translation drawn from ``[-shift, shift]`` pixels on each axis.

Koch, Zemel and Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image
Recognition", ICML Deep Learning Workshop, train on Omniglot's background
alphabets with such distortions (rotation 10 degrees, shear 0.3, scale 0.2, translation 2 of
105 pixels). Unlike :mod:`fedmeta.skew`, which gives each client one fixed shift, augmentation
is fresh noise per image. Its draws come from their own random stream, so a scenario samples
the same training tasks with and without it.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from fedmeta.options import Options
from fedmeta.skew import warp
from fedmeta.tasks import Task


class AugmentOptions(Options):
    rotation: float = Field(0.0, ge=0, le=180)
    shear: float = Field(0.0, ge=0, lt=1)
    scale: float = Field(0.0, ge=0, lt=1)
    shift: float = Field(0.0, ge=0)

    @property
    def active(self) -> bool:
        return any(v > 0 for v in self.model_dump().values())


def affine_matrices(
    options: AugmentOptions, n: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """``n`` random ``2 x 3`` sampling matrices in :func:`torch.nn.functional.affine_grid`'s
    normalised coordinates for images of ``size`` ``(H, W)`` pixels."""
    u = rng.uniform(-1.0, 1.0, size=(n, 7))  # always seven draws per image
    angle = np.radians(options.rotation) * u[:, 0]
    shear_x, shear_y = options.shear * u[:, 1], options.shear * u[:, 2]
    scale_x, scale_y = 1 + options.scale * u[:, 3], 1 + options.scale * u[:, 4]
    # normalised coordinates span 2 units over the image, so a pixel is 2 / size
    shift_x = options.shift * u[:, 5] * 2 / size[1]
    shift_y = options.shift * u[:, 6] * 2 / size[0]
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear = np.stack([np.stack([np.ones(n), shear_x], -1), np.stack([shear_y, np.ones(n)], -1)], -2)
    scale = np.stack(
        [np.stack([scale_x, np.zeros(n)], -1), np.stack([np.zeros(n), scale_y], -1)], -2
    )
    forward = rot @ shear @ scale  # maps an input point to its place in the output
    # affine_grid samples the input at theta @ output point: the inverse map
    inverse = np.linalg.inv(forward)
    offset = -inverse @ np.stack([shift_x, shift_y], -1)[..., None]
    return np.concatenate([inverse, offset], -1)


class Augment:
    """Distorts the images of training episodes (see the module docstring)."""

    def __init__(self, options: AugmentOptions) -> None:
        self.options = options

    def images(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``x`` ``(N, C, H, W)``, each image distorted on its own (bilinear, zero fill)."""
        theta = torch.from_numpy(affine_matrices(self.options, len(x), x.shape[-2:], rng))
        return warp(x, theta.to(x.dtype))

    def __call__(self, task: Task, rng: np.random.Generator) -> Task:
        return Task(
            self.images(task.support_x, rng),
            task.support_y,
            self.images(task.query_x, rng),
            task.query_y,
            classes=task.classes,
        )


def check_image_data(options: AugmentOptions, feature_shape: tuple[int, ...]) -> str | None:
    """Why ``options`` cannot apply to data of ``feature_shape``, or ``None``."""
    if options.active and len(feature_shape) != 3:
        return (
            f"augment needs image data (channels, height, width) but the data have feature "
            f"shape {feature_shape}; remove [augment]"
        )
    if options.shift and options.shift >= min(feature_shape[-2:]) / 2:
        return (
            f"augment.shift = {options.shift} pixels moves a {feature_shape[-2]}x"
            f"{feature_shape[-1]} image out of view; use less than {min(feature_shape[-2:]) / 2}"
        )
    return None

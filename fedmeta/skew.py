"""Per-client skew: feature shift ("scanner shift") and label noise, drawn once per client.

``[skew]`` in a scenario turns it on. For every client a transform is drawn once from the
scenario seed and the client's id (so a hospital keeps its "scanner" across rounds and
strategies), then applied to every episode that client samples:

* ``rotation``: the client's images are rotated by an angle drawn uniformly from
  ``[-rotation, rotation]`` degrees;
* ``contrast``: pixel contrast around the image mean is scaled by a factor drawn from
  ``[1 - contrast, 1 + contrast]``;
* ``blur``: a Gaussian blur whose sigma is drawn from ``[0, blur]`` pixels;
* ``noise``: additive Gaussian noise, with a per-client standard deviation drawn from
  ``[0, noise]`` and fresh noise per episode;
* ``label-noise``: each *training* example's label is replaced by another class of its episode
  with probability drawn from ``[0, label-noise]`` per client (held-out clients keep clean labels,
  so evaluation measures the damage done in training).

Rotation and blur need image data; contrast and noise also apply to feature vectors. See Hsieh
et al. (2020), "The Non-IID Data Quagmire of Decentralized Machine Learning", and Kairouz et
al. (2021), "Advances and Open Problems in Federated Learning", section 3.1, for these kinds of
skew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from fedmeta.options import Options
from fedmeta.tasks import Task


class SkewOptions(Options):
    rotation: float = Field(0.0, ge=0, le=180)
    contrast: float = Field(0.0, ge=0, lt=1)
    blur: float = Field(0.0, ge=0)
    noise: float = Field(0.0, ge=0)
    label_noise: float = Field(0.0, ge=0, le=1)

    @property
    def active(self) -> bool:
        return any(v > 0 for v in self.model_dump().values())


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Images ``(N, C, H, W)`` resampled at ``theta`` ``(N, 2, 3)`` times each output point, in
    :func:`torch.nn.functional.affine_grid`'s normalised coordinates (bilinear, zero fill)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images ``(N, C, H, W)`` about their centre (bilinear, zero fill)."""
    a = math.radians(degrees)
    theta = x.new_tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    return warp(x, theta.expand(len(x), 2, 3))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images ``(N, C, H, W)`` (kernel radius 3 sigma, reflected
    borders)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@dataclass(frozen=True)
class ClientSkew:
    """One client's drawn transform (see the module docstring)."""

    angle: float = 0.0
    contrast: float = 1.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    flip_prob: float = 0.0

    @classmethod
    def draw(cls, options: SkewOptions, rng: np.random.Generator, heldout: bool) -> ClientSkew:
        u = rng.uniform(size=5)  # always five draws, so one option does not shift another
        return cls(
            angle=float((2 * u[0] - 1) * options.rotation),
            contrast=float(1 + (2 * u[1] - 1) * options.contrast),
            blur_sigma=float(u[2] * options.blur),
            noise_std=float(u[3] * options.noise),
            flip_prob=0.0 if heldout else float(u[4] * options.label_noise),
        )

    def features(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        image = x.dim() == 4
        if (self.angle or self.blur_sigma) and not image:
            raise ValueError("skew.rotation and skew.blur need image data; set them to 0")
        if self.angle:
            x = rotate(x, self.angle)
        if self.blur_sigma > 0.05:
            x = gaussian_blur(x, self.blur_sigma)
        if self.contrast != 1.0:
            dims = tuple(range(1, x.dim()))
            mean = x.mean(dim=dims, keepdim=True)
            x = (x - mean) * self.contrast + mean
        if self.noise_std:
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            x = x + self.noise_std * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        return x

    def labels(self, y: torch.Tensor, n_way: int, rng: np.random.Generator) -> torch.Tensor:
        if not self.flip_prob or n_way < 2 or y.is_floating_point():
            return y
        flip = torch.from_numpy(rng.uniform(size=len(y)) < self.flip_prob)
        shift = torch.from_numpy(rng.integers(1, n_way, size=len(y)))
        return torch.where(flip, (y + shift) % n_way, y)

    def __call__(self, task: Task, n_way: int, rng: np.random.Generator) -> Task:
        return Task(
            self.features(task.support_x, rng),
            self.labels(task.support_y, n_way, rng),
            self.features(task.query_x, rng),
            self.labels(task.query_y, n_way, rng),
            classes=task.classes,
        )

"""Models: Conv4 (the MAML Omniglot network) and an MLP.

Finn, Abbeel and Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML: four blocks of 3x3 convolutions with 64 filters, normalisation and ReLU; on
28x28 Omniglot the convolutions use stride 2 instead of max-pooling. ``downsample = "max-pool"``
gives the blocks of Vinyals et al. (2016, "Matching Networks for One Shot Learning", NeurIPS) and
Snell et al. (2017, "Prototypical Networks for Few-shot Learning", NeurIPS): a stride-1
convolution, normalisation, ReLU and 2x2 max-pooling (a 64-dimensional embedding of a 28x28
image, against 256 with strided convolutions; a 40-way ProtoNet step took 4.2 times as long on
2 CPU cores, docs/RESULTS.md).

Normalisation: ``"batch"`` is BatchNorm with batch statistics only
(``track_running_stats=False``), as in MAML; it has no buffers, so a model's state is exactly its
parameters, and its meta-gradients are exact when tasks are processed in a Python loop (they are
wrong under ``torch.func.vmap``, so fedmeta never vmaps over tasks; :mod:`fedmeta.batched` stacks
tasks along channels instead, which keeps each task's statistics exact). ``"group"`` and ``"none"``
are the alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from pydantic import Field
from torch import nn

from fedmeta.options import Options
from fedmeta.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class RelationOptions(Options):
    relation_module: bool = False
    """Add a relation module (Sung et al., 2018) that scores the concatenated embeddings of a
    (class, query) pair; the Relation Network learner needs it."""
    relation_hidden: int = Field(8, ge=1)
    """Units of the relation module's hidden fully connected layer (8 in the paper)."""


class Conv4Options(RelationOptions):
    width: int = Field(64, ge=1)
    norm: Literal["batch", "group", "none"] = "batch"
    downsample: Literal["stride", "max-pool"] = "stride"
    """How each block halves the image: a stride-2 convolution (MAML) or 2x2 max-pooling after
    a stride-1 convolution (Matching and Prototypical Networks)."""


class MLPOptions(RelationOptions):
    hidden: tuple[int, ...] = (40, 40)


@MODELS.register("conv4", help="4 conv blocks (3x3, stride 2 or max-pool) + linear head")
class Conv4(nn.Module):
    """Conv4 with ``width`` channels per block and an ``n_way`` linear head.

    Parameters
    ----------
    in_shape : tuple[int, int, int]
        ``(channels, height, width)`` of one example.
    n_way : int
        Number of output classes.
    width : int
        Channels of every block (64 in MAML).
    norm : str
        ``"batch"``, ``"group"`` or ``"none"``.
    downsample : str
        ``"stride"`` (stride-2 convolutions, MAML) or ``"max-pool"`` (2x2 max-pooling, Snell et
        al.).
    """

    Options = Conv4Options

    @staticmethod
    def mixes_examples(options: Conv4Options) -> bool:
        """Whether one example's output depends on the others in its batch (BatchNorm with
        batch statistics does): per-example gradients, and so DP-SGD, need it false."""
        return options.norm == "batch"

    def __init__(
        self,
        in_shape: tuple[int, ...],
        n_way: int,
        width: int = 64,
        norm: str = "batch",
        relation_module: bool = False,
        relation_hidden: int = 8,
        downsample: str = "stride",
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"conv4 needs (channels, height, width) inputs, got {in_shape}")
        if downsample not in ("stride", "max-pool"):
            raise ValueError(f"unknown downsample {downsample!r}")
        pool = downsample == "max-pool"
        layers: list[nn.Module] = []
        c, h, w = in_shape
        for _ in range(4):
            layers += [nn.Conv2d(c, width, 3, stride=1 if pool else 2, padding=1)]
            layers += [_norm(norm, width), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
            c, h, w = (width, h // 2, w // 2) if pool else (width, (h + 1) // 2, (w + 1) // 2)
        if h < 1 or w < 1:
            raise ValueError(
                f"model.downsample = 'max-pool' needs images of at least 16x16, got {in_shape}"
            )
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c * h * w, n_way)
        self.feature_map = (c, h, w)
        """The shape of one embedding before ``features`` flattens it."""
        if relation_module:
            # Sung et al.'s relation module: two conv blocks on the concatenated (2c, h, w)
            # maps, then FC-ReLU-FC to one score. Their max-pools are left out: the maps of a
            # Conv4 on 28x28 are already 2x2 (stride) or 1x1 (max-pool).
            self.relation = nn.Sequential(
                nn.Conv2d(2 * c, c, 3, padding=1),
                _norm(norm, c),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1),
                _norm(norm, c),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(c * h * w, relation_hidden),
                nn.ReLU(),
                nn.Linear(relation_hidden, 1),
            )

    def forward(self, x):
        return self.head(self.features(x))


@MODELS.register("mlp", help="fully connected ReLU network; sinusoid regression, tabular data")
class MLP(nn.Module):
    """A ReLU MLP with hidden sizes ``hidden`` (MAML's sinusoid net is ``(40, 40)``)."""

    Options = MLPOptions

    @staticmethod
    def mixes_examples(options: MLPOptions) -> bool:
        """An MLP treats every example on its own."""
        return False

    def __init__(
        self,
        in_shape: tuple[int, ...],
        n_way: int,
        hidden: tuple[int, ...] = (40, 40),
        relation_module: bool = False,
        relation_hidden: int = 8,
    ) -> None:
        super().__init__()
        sizes = [math.prod(in_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], n_way)
        self.feature_map = (sizes[-1],)
        if relation_module:  # a fully connected relation module on concatenated embeddings
            self.relation = nn.Sequential(
                nn.Linear(2 * sizes[-1], relation_hidden),
                nn.ReLU(),
                nn.Linear(relation_hidden, 1),
            )

    def forward(self, x):
        return self.head(self.features(x))

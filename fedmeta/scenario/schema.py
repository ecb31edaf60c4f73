"""The scenario schema: every table of a scenario file, validated and frozen.

Plain tables (``[task]``, ``[clients]``, ``[train]``, ...) are options models. Named tables
(``[data]``, ``[partition]``, ``[model]``, ``[learner]``, ``[strategy]``) hold a ``name`` and the
options of the registry entry it picks (:data:`NAMED_TABLES`). Loading and validation live in
:mod:`fedmeta.scenario.load`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedmeta.adversary import AdversaryOptions
from fedmeta.augment import AugmentOptions
from fedmeta.faults import FaultOptions
from fedmeta.learners import LEARNERS
from fedmeta.models import MODELS
from fedmeta.options import Options
from fedmeta.partition import PARTITIONERS
from fedmeta.privacy.options import PrivacyOptions
from fedmeta.registry import Registry
from fedmeta.skew import SkewOptions
from fedmeta.strategies import STRATEGIES


class TaskOptions(Options):
    n_way: int = Field(5, ge=1)
    k_shot: int = Field(1, ge=1)
    query: int = Field(15, ge=1)
    label_order: Literal["random", "sorted"] = "random"
    train_way: int | None = Field(None, ge=1)
    """Ways of the training episodes (default ``n_way``; held-out evaluation always uses
    ``n_way``). Only for learners that set their head from the support set: Snell et al.
    (2017) train ProtoNet at 60 ways for 5-way Omniglot tests."""

    @property
    def training_way(self) -> int:
        """The ways of a training episode."""
        return self.train_way or self.n_way


class ClientsOptions(Options):
    train: int = Field(50, ge=1)
    heldout: int = Field(10, ge=1)
    heldout_split: Literal["classes", "examples"] = "classes"


class TrainOptions(Options):
    rounds: int = Field(20, ge=0)
    fraction: float = Field(0.2, gt=0.0, le=1.0)
    timeout: float = Field(3600.0, gt=0)
    max_seconds: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    max_stalled_rounds: int = Field(5, ge=1)
    """Consecutive rounds without an aggregate (every reply failed or was rejected) after
    which the run stops, resumable, with exit code 1."""


class EvaluationOptions(Options):
    every: int = Field(5, ge=1)
    tasks_per_client: int = Field(20, ge=1)
    query: int | None = Field(None, ge=1)
    inner_steps: int | None = Field(None, ge=0)
    at_start: bool = True
    clients: int | None = Field(None, ge=1)
    """Held-out clients scored per evaluation round, a seeded sample (the final evaluation
    scores all of them); by default all, every time."""


class BackendOptions(Options):
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(1, ge=1)
    precision: Literal["float32", "bfloat16"] = "float32"
    """``bfloat16``: training clients run their local update under ``torch.autocast``
    (convolutions and matrix products in bfloat16; weights, gradients, optimiser state, the
    aggregation and held-out evaluation stay float32). Faster on CPUs with AMX or AVX-512 BF16
    and on recent GPUs; the numbers differ from float32 runs."""


class CompareOptions(Options):
    """``[compare]``: the strategies and seeds of ``fedmeta compare`` (see :mod:`fedmeta.study`).

    ``define`` maps a strategy name to a partial scenario merged into this one, e.g.
    ``[compare.define.fedreptile]`` with ``learner = {name = "reptile", outer-lr = 1.0}``.
    ``target`` is the held-out accuracy for the "rounds to target" column; ``adapt-steps`` are
    the adaptation step counts of the accuracy-vs-steps plot, measured on the first
    ``adapt-tasks`` evaluation tasks of every held-out client.
    """

    strategies: tuple[str, ...] = ()
    seeds: int = Field(1, ge=1)
    target: float = Field(0.9, gt=0)
    adapt_steps: tuple[Annotated[int, Field(ge=0)], ...] = (0, 1, 2, 3, 5, 10)
    adapt_tasks: int = Field(10, ge=1)
    define: dict[str, dict[str, Any]] = {}


class Named(BaseModel):
    """A table with a ``name`` and the options of the registry entry it names."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str
    options: Any

    def to_toml(self) -> dict:
        return {"name": self.name, **self.options.to_toml()}


class DataSection(Named):
    root: str | None = None
    download: bool = False
    seed: int = 0

    def to_toml(self) -> dict:
        extra = {"root": self.root} if self.root else {}
        return {
            "name": self.name,
            **extra,
            "download": self.download,
            "seed": self.seed,
            **self.options.to_toml(),
        }


class Scenario(BaseModel):
    """A whole experiment, validated. Build it with :func:`load_scenario`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str
    description: str = ""
    seed: int = 0
    data: DataSection
    partition: Named
    model: Named
    learner: Named
    strategy: Named
    task: TaskOptions
    clients: ClientsOptions
    train: TrainOptions
    evaluation: EvaluationOptions
    backend: BackendOptions
    compare: CompareOptions = CompareOptions()
    skew: SkewOptions = SkewOptions()
    augment: AugmentOptions = AugmentOptions()
    adversary: AdversaryOptions = AdversaryOptions()
    privacy: PrivacyOptions = PrivacyOptions()
    faults: FaultOptions = FaultOptions()

    def to_toml(self) -> dict:
        """The fully resolved scenario (every default written out), ready for ``tomli_w``."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed}
        if self.description:
            out["description"] = self.description
        for key in (
            "data",
            "partition",
            "model",
            "learner",
            "strategy",
            "task",
            "clients",
            "train",
            "evaluation",
            "backend",
        ):
            out[key] = getattr(self, key).to_toml()
        if self.compare != CompareOptions():
            out["compare"] = self.compare.to_toml()
        if self.skew.active:
            out["skew"] = self.skew.to_toml()
        if self.augment.active:
            out["augment"] = self.augment.to_toml()
        if self.adversary.fraction > 0:
            out["adversary"] = self.adversary.to_toml()
        if self.privacy.active:
            out["privacy"] = self.privacy.to_toml()
        if self.faults.active:
            out["faults"] = self.faults.to_toml()
        return out

    def to_json(self) -> str:
        """The resolved scenario as canonical JSON: what every message carries, and what a
        study hashes to recognise a cell's settings."""
        return json.dumps(self.to_toml(), sort_keys=True)


PLAIN_TABLES: dict[str, type[Options]] = {
    "task": TaskOptions,
    "clients": ClientsOptions,
    "train": TrainOptions,
    "evaluation": EvaluationOptions,
    "backend": BackendOptions,
    "compare": CompareOptions,
    "skew": SkewOptions,
    "augment": AugmentOptions,
    "adversary": AdversaryOptions,
    "privacy": PrivacyOptions,
    "faults": FaultOptions,
}
NAMED_TABLES: dict[str, Registry] = {
    "partition": PARTITIONERS,
    "model": MODELS,
    "learner": LEARNERS,
    "strategy": STRATEGIES,
}
DEFAULT_NAMES = {
    "data": "synthetic",
    "partition": "label-split",
    "model": "conv4",
    "learner": "maml",
    "strategy": "fedavg",
}
TOP_KEYS = {"name", "description", "seed", *PLAIN_TABLES, *DEFAULT_NAMES}

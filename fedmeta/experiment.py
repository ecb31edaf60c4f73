"""Everything a run builds from a scenario, built once per process and cached.

The server and every client process build the same :class:`Experiment` from the scenario's
JSON: the data source (loaded once per process), the client layout, the model, the learner and
per-client samplers. All randomness is derived from the scenario seed and explicit keys, so two
runs of one scenario see identical partitions, training tasks and evaluation tasks.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fedmeta.adversary import byzantine_clients, flip_query_labels
from fedmeta.augment import Augment, check_image_data
from fedmeta.data import DATASETS, DataSource
from fedmeta.episodes import EpisodeSampler
from fedmeta.errors import FedmetaError
from fedmeta.learners import LEARNERS, Learner
from fedmeta.models import MODELS
from fedmeta.partition import PARTITIONERS, Layout, Shard, build_layout, holdout_split
from fedmeta.privacy.dpsgd import make_private
from fedmeta.protocol import Stream, rng_for, torch_seed_for
from fedmeta.scenario import Scenario, scenario_from_dict
from fedmeta.skew import ClientSkew
from fedmeta.tasks import Task


@functools.lru_cache(maxsize=4)
def _load_source(name: str, options_json: str, root: str | None, seed: int, download: bool):
    spec = DATASETS.get(name, key="data.name")
    options = spec.Options.model_validate(json.loads(options_json))
    return spec.build(options, root, seed, download)


def data_loads() -> int:
    """How many times this process has built a data source (1 for a whole run)."""
    return _load_source.cache_info().misses


def load_source(scenario: Scenario) -> DataSource:
    """The scenario's data source, loaded once per process."""
    d = scenario.data
    return _load_source(d.name, d.options.model_dump_json(), d.root, d.seed, d.download)


def pick_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise FedmetaError("backend.device = 'cuda' but no CUDA device is visible; use 'auto'")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


CACHED_CLIENTS = 256
"""Clients whose sampler and evaluation tasks a process keeps (the most recently used): a
process of a 10,000-client simulation serves many clients, and rebuilding either gives the
same result (they are seeded by client)."""


class _Recent(OrderedDict):
    """A mapping that keeps only its ``size`` most recently used entries."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or_make(self, key, make):
        """The value of ``key``, made by ``make()`` if absent."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


@dataclass
class Experiment:
    """The built pieces of a scenario (see module docstring)."""

    scenario: Scenario
    source: DataSource
    layout: Layout
    model: nn.Module
    learner: Learner
    device: torch.device
    byzantine: frozenset[int] = frozenset()
    """Partition ids of the Byzantine training clients (``[adversary]``)."""
    train_learner: Learner | None = None
    """The learner of local updates when it differs from :attr:`learner` (DP-SGD); held-out
    clients always adapt with :attr:`learner`."""
    _samplers: _Recent = field(default_factory=lambda: _Recent(CACHED_CLIENTS))
    _eval_tasks: _Recent = field(default_factory=lambda: _Recent(CACHED_CLIENTS))
    _audit_splits: dict[int, tuple[Shard, Shard]] = field(default_factory=dict)

    @property
    def n_clients(self) -> int:
        return self.scenario.clients.train + self.scenario.clients.heldout

    @property
    def local_learner(self) -> Learner:
        """The learner training clients run their local update with."""
        return self.train_learner or self.learner

    def is_heldout(self, partition_id: int) -> bool:
        return partition_id >= self.scenario.clients.train

    def _audit_split(self, partition_id: int) -> tuple[Shard, Shard]:
        if partition_id not in self._audit_splits:
            rng = rng_for(self.scenario.seed, Stream.AUDIT, partition_id)
            fraction = self.scenario.privacy.audit_holdout
            shard = self.layout.shard(partition_id)
            self._audit_splits[partition_id] = holdout_split(shard, fraction, rng)
        return self._audit_splits[partition_id]

    def shard(self, partition_id: int) -> Shard:
        """The client's data as it uses it: its layout shard, minus the examples the privacy
        audit holds back from a training client (``privacy.audit``)."""
        if self.scenario.privacy.audit and not self.is_heldout(partition_id):
            return self._audit_split(partition_id)[0]
        return self.layout.shard(partition_id)

    def audit_holdout(self, partition_id: int) -> Shard:
        """The examples of training client ``partition_id`` that never train: the audit's
        non-members."""
        return self._audit_split(partition_id)[1]

    def sampler(self, partition_id: int, query: int | None = None) -> EpisodeSampler:
        """The client's episode sampler (``query`` examples per class; default ``task.query``):
        ``task.train-way`` ways for a training client, ``task.n-way`` for a held-out one."""
        query = query or self.scenario.task.query
        key = (partition_id, query)
        return self._samplers.get_or_make(key, lambda: self._new_sampler(partition_id, query))

    def _new_sampler(self, partition_id: int, query: int) -> EpisodeSampler:
        t = self.scenario.task
        held = self.is_heldout(partition_id)
        role = "held-out" if held else "training"
        n_way, way_key = t.n_way, "task.n-way"
        if not held and t.train_way is not None:
            n_way, way_key = t.train_way, "task.train-way"
        skew = None
        if self.scenario.skew.active:
            index = partition_id - self.scenario.clients.train if held else partition_id
            rng = rng_for(self.scenario.seed, Stream.SKEW, int(held), index)
            skew = ClientSkew.draw(self.scenario.skew, rng, held)
        return EpisodeSampler(
            self.source,
            self.shard(partition_id),
            n_way,
            t.k_shot,
            query,
            who=f"{role} client {partition_id}",
            skew=skew,
            sorted_labels=t.label_order == "sorted",
            way_key=way_key,
        )

    def eval_tasks(self, partition_id: int) -> list[Task]:
        """The fixed evaluation tasks of a client: the same in every round and every strategy."""
        return self._eval_tasks.get_or_make(
            partition_id, lambda: self._new_eval_tasks(partition_id)
        )

    def _new_eval_tasks(self, partition_id: int) -> list[Task]:
        # keyed by the held-out index, not the partition id: the same tasks whatever the number
        # of training clients
        if self.is_heldout(partition_id):
            index = partition_id - self.scenario.clients.train
            rng = rng_for(self.scenario.seed, Stream.EVAL, index)
        else:  # training clients are not evaluated by the server; own stream for tools
            rng = rng_for(self.scenario.seed, Stream.EVAL, partition_id, 1)
        ev = self.scenario.evaluation
        tasks = self.sampler(partition_id, ev.query).sample(rng, ev.tasks_per_client)
        return [t.to(self.device) for t in tasks]

    def train_sampler(self, partition_id: int, server_round: int):
        """``sample(n)`` for one client's local update in one round (seeds torch as well)."""
        seed = self.scenario.seed
        torch.manual_seed(torch_seed_for(seed, Stream.TRAIN, server_round, partition_id))
        rng = rng_for(seed, Stream.TRAIN, server_round, partition_id)
        sampler = self.sampler(partition_id)
        transforms: list[Callable[[Task], Task]] = []
        if self.scenario.augment.active:
            augment = Augment(self.scenario.augment)
            augment_rng = rng_for(seed, Stream.AUGMENT, server_round, partition_id)
            transforms.append(lambda t: augment(t, augment_rng))
        if partition_id in self.byzantine and self.scenario.adversary.attack == "label-flip":
            n_way = self.scenario.task.training_way
            transforms.append(lambda t: flip_query_labels(t, n_way))

        def sample(n: int) -> list[Task]:
            tasks = sampler.sample(rng, n)
            for transform in transforms:
                tasks = [transform(t) for t in tasks]
            return [t.to(self.device) for t in tasks]

        return sample

    def initial_params(self) -> dict[str, Tensor]:
        """Seeded initial meta-parameters (CPU tensors)."""
        torch.manual_seed(torch_seed_for(self.scenario.seed, Stream.INIT))
        model = build_model(self.scenario, self.source)
        return self.learner.init_params(
            {k: v.detach().clone() for k, v in model.state_dict().items()}
        )

    def to_device(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in params.items()}

    def training_precision(self) -> torch.autocast:
        """The context a training client's local update runs in (``backend.precision``):
        mixed-precision autocast for ``bfloat16``, a no-op for ``float32``."""
        bf16 = self.scenario.backend.precision == "bfloat16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)


def model_outputs(scenario: Scenario, source: DataSource) -> int:
    """Outputs of the model's head: 1 for regression; for classification ``n_way``, or one per
    training-pool class for a learner with a global head (FedAvg)."""
    if source.kind.accuracy is None:
        return 1
    if LEARNERS.get(scenario.learner.name, key="learner.name").global_head:
        return len(source.pool("train"))
    return scenario.task.n_way


def build_model(scenario: Scenario, source: DataSource) -> nn.Module:
    cls = MODELS.get(scenario.model.name, key="model.name")
    out = model_outputs(scenario, source)
    try:
        return cls(source.feature_shape, out, **scenario.model.options.model_dump())
    except ValueError as exc:
        raise FedmetaError(
            f"model.name = {scenario.model.name!r} does not fit data.name = "
            f"{scenario.data.name!r}: {exc}; pick another model"
        ) from None


def build_experiment(scenario: Scenario, check_all: bool = False) -> Experiment:
    """Build an experiment; with ``check_all`` every client's sampler is built (to validate)."""
    source = load_source(scenario)
    if source.kind.accuracy is None and scenario.task.n_way != 1:
        raise FedmetaError(
            f"task.n-way = {scenario.task.n_way} but {scenario.data.name} is a regression "
            f"dataset; set task.n-way = 1"
        )
    sk = scenario.skew
    if (sk.rotation or sk.blur) and len(source.feature_shape) != 3:
        raise FedmetaError(
            f"skew.rotation and skew.blur need image data but {scenario.data.name} has "
            f"feature shape {source.feature_shape}; set them to 0 (contrast and noise work)"
        )
    if (why := check_image_data(scenario.augment, source.feature_shape)) is not None:
        raise FedmetaError(why)
    partitioner = PARTITIONERS.get(scenario.partition.name, key="partition.name")(
        scenario.partition.options
    )
    c = scenario.clients
    if (scenario.evaluation.clients or 0) > c.heldout:
        raise FedmetaError(
            f"evaluation.clients = {scenario.evaluation.clients} but clients.heldout = "
            f"{c.heldout}; sample at most {c.heldout} held-out clients per evaluation"
        )
    layout = build_layout(source, partitioner, c.train, c.heldout, scenario.seed, c.heldout_split)
    device = pick_device(scenario.backend.device)
    model = build_model(scenario, source).to(device)
    learner = LEARNERS.get(scenario.learner.name, key="learner.name")(
        model, source.kind.loss, scenario.learner.options, train_classes=source.pool("train")
    )
    byzantine = byzantine_clients(scenario.adversary, c.train, scenario.seed)
    private = scenario.privacy
    train_learner = (
        make_private(learner, private) if private.example_noise_multiplier is not None else None
    )
    exp = Experiment(scenario, source, layout, model, learner, device, byzantine, train_learner)
    if check_all:
        for pid in range(exp.n_clients):
            query = scenario.evaluation.query if exp.is_heldout(pid) else None
            exp._new_sampler(pid, query or scenario.task.query)
    return exp


@functools.lru_cache(maxsize=2)
def experiment_from_json(scenario_json: str, data_root: str | None = None) -> Experiment:
    """The per-process cached experiment of a scenario sent over the wire as JSON; a
    ``data_root`` (a deployed node's own data folder) replaces the scenario's ``data.root``."""
    raw = json.loads(scenario_json)
    if data_root is not None:
        raw["data"]["root"] = data_root
    return build_experiment(scenario_from_dict(raw))


def scenario_clients(scenario_json: str) -> int:
    """How many clients (training and held-out) a scenario sent as JSON names, without
    building its experiment."""
    clients = json.loads(scenario_json)["clients"]
    return int(clients["train"]) + int(clients["heldout"])

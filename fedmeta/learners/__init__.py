"""Local meta-learning algorithms, one per file, resolved by name through :data:`LEARNERS`."""

from fedmeta.learners.base import Learner, LearnerConfig, Params
from fedmeta.registry import Registry

LEARNERS: Registry[type[Learner]] = Registry("learner")

__all__ = ["LEARNERS", "Learner", "LearnerConfig", "Params"]

# Importing each algorithm's module registers it in LEARNERS (the imports must follow LEARNERS).
from fedmeta.learners import (  # noqa: E402, F401
    anil,
    ditto,
    fedavg,
    fomaml,
    local_only,
    maml,
    metasgd,
    perfedavg,
    pfedme,
    protonet,
    reptile,
)

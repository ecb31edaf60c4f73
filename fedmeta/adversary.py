"""Byzantine training clients: who they are and what they do.

``[adversary]`` makes a fraction of the training clients Byzantine. Which ones is drawn once
from the scenario seed. Their attack is one of:

* ``sign-flip``: the client replies ``w - scale * (w_local - w)``: its update reversed and
  scaled (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", section 5; Fang et al., 2020, "Local Model Poisoning Attacks to
  Byzantine-Robust Federated Learning");
* ``noise``: the client replies ``w + N(0, scale^2)`` in every coordinate instead of its update;
* ``label-flip``: the client trains honestly on corrupted tasks: every query label is shifted
  to the next class of its episode, so the support set teaches one mapping and the query set
  scores another (data poisoning; Tolpegin et al., 2020, "Data Poisoning Attacks Against
  Federated Learning Systems").

Weight attacks are applied by a client mod (``clients.mods.byzantine_mod``) to the honest reply,
so no learner knows about adversaries; label flips are applied to the Byzantine client's
training tasks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fedmeta.options import Options
from fedmeta.protocol import Stream, rng_for
from fedmeta.tasks import Task


class AdversaryOptions(Options):
    fraction: float = Field(0.0, ge=0.0, le=1.0)
    attack: Literal["sign-flip", "noise", "label-flip"] = "sign-flip"
    scale: float = Field(1.0, ge=0.0)


def byzantine_clients(options: AdversaryOptions, n_train: int, seed: int) -> frozenset[int]:
    """The partition ids of the Byzantine training clients (``round(fraction * n_train)``)."""
    k = round(options.fraction * n_train)
    rng = rng_for(seed, Stream.ADVERSARY)
    return frozenset(int(i) for i in rng.permutation(n_train)[:k])


def attack_weights(
    options: AdversaryOptions,
    sent: dict[str, torch.Tensor],
    honest: dict[str, torch.Tensor],
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """The Byzantine reply built from the weights the server ``sent`` and the ``honest`` reply.
    ``label-flip`` leaves the reply alone (its damage is in the data)."""
    if options.attack == "sign-flip":
        return {k: sent[k] - options.scale * (honest[k] - sent[k]) for k in honest}
    if options.attack == "noise":
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return {
            k: sent[k] + options.scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for k, v in honest.items()
        }
    return honest


def flip_query_labels(task: Task, n_way: int) -> Task:
    """``label-flip``: each query label becomes the next class of the episode."""
    if task.query_y.is_floating_point():
        return Task(task.support_x, task.support_y, task.query_x, -task.query_y, task.classes)
    return Task(
        task.support_x, task.support_y, task.query_x, (task.query_y + 1) % n_way, task.classes
    )

"""Few-shot tasks and the two task kinds (classification and regression).

A task is one episode: a support set to adapt on and a query set to score on
(Vinyals et al., 2016, "Matching Networks for One Shot Learning").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _copy(t: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass(frozen=True)
class Task:
    """One few-shot episode.

    ``support_y`` and ``query_y`` hold class positions ``0..n_way-1`` (int64) for classification,
    or float targets of shape ``(n, 1)`` for regression. ``classes`` (optional) holds the source's
    class id at each position, for learners that train on global labels.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None

    def to(self, device: torch.device | str) -> Task:
        """The task on ``device``; a copy to a CUDA device goes through pinned host memory,
        asynchronously."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        return Task(
            *(
                _copy(t, device)
                for t in (self.support_x, self.support_y, self.query_x, self.query_y)
            ),
            classes=None if self.classes is None else _copy(self.classes, device),
        )

    def pooled(self) -> tuple[Tensor, Tensor]:
        """Support and query examples concatenated into one batch (features, targets; support
        first), for learners without support/query roles in training (Reptile, FedAvg,
        pFedMe)."""
        return torch.cat([self.support_x, self.query_x]), torch.cat([self.support_y, self.query_y])


def n_way_of(task: Task) -> int:
    """The number of classes of a classification episode."""
    return len(task.classes) if task.classes is not None else int(task.support_y.max()) + 1


LossFn = Callable[[Tensor, Tensor], Tensor]
TaskBatchFn = Callable[[int], list[Task]]
"""``sample(n)`` returns ``n`` freshly sampled tasks from one client's shard."""


def _accuracy(pred: Tensor, y: Tensor) -> float:
    return (pred.argmax(dim=-1) == y).float().mean().item()


@dataclass(frozen=True)
class TaskKind:
    """What a dataset's tasks are: the loss to train with and whether accuracy is defined."""

    name: str
    loss: LossFn
    accuracy: Callable[[Tensor, Tensor], float] | None


CLASSIFICATION = TaskKind("classification", F.cross_entropy, _accuracy)
REGRESSION = TaskKind("regression", F.mse_loss, None)

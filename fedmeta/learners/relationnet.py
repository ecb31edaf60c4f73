"""Relation Network: a federated embedding and a learned relation module.

Sung, Yang, Zhang, Xiang, Torr and Hospedales (2018), "Learning to Compare: Relation Network for
Few-Shot Learning", CVPR. An embedding ``f`` maps every image to a feature map. A class is
represented by the **sum** of its support examples' maps (one map at 1-shot). The relation
module ``g`` scores a (class, query) pair from their maps concatenated along channels:
``r = sigmoid(g([f_class, f(x)]))``. Training minimises the mean squared error between the
scores and the one-hot labels of the query set. Both ``f`` and ``g`` are federated
meta-parameters; the model supplies ``g`` (``model.relation-module = true``).

Evaluation fits fedmeta's held-out protocol: adapting to a task embeds its support set and keeps
the class maps (under the key :data:`CLASS_MAPS`); a prediction is the relation score of each
class, and accuracy is its argmax. Before adaptation there are no class maps and every class
scores alike. ``predict`` returns the scores before the sigmoid, so the reported query loss is
a cross-entropy over them; training uses the paper's MSE.

Settings (paper section 4.1 and the authors' code ``floodsung/LearningToCompare_FSL``) against
fedmeta's defaults:

==================  ===============================  ========================================
setting             paper                            fedmeta default (reason if different)
==================  ===============================  ========================================
loss                MSE on one-hot targets           MSE on one-hot targets
optimiser           Adam, lr 0.001                   Adam, lr 0.001
lr schedule         halved every 100,000 episodes    none (set a server optimiser instead)
embedding           4 conv blocks, 2 max-pools,      the scenario's model (Conv4: stride-2
                    64x5x5 maps on Omniglot          convolutions, 64x2x2 maps on 28x28)
relation module     2 conv blocks with max-pool,     2 conv blocks without pooling (2x2 maps),
                    FC 8, FC 1, sigmoid              FC ``relation-hidden`` (8), FC 1, sigmoid
k > 1 shots         class map = sum over shots       class map = sum over shots
support and query   embedded in separate batches     separate batches, as in the authors' code
training ways       5 (Omniglot 5-way)               ``task.train-way`` (default ``n-way``)
==================  ===============================  ========================================
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from fedmeta.learners.base import LEARNERS, Learner, Params, loss_gradient, split_prefix
from fedmeta.tasks import Task, n_way_of

CLASS_MAPS = "relation-class-maps"
"""The key under which :meth:`RelationNet.adapt` stores a task's class maps; never federated."""


def class_maps(maps: Tensor, y: Tensor, n_way: int) -> Tensor:
    """The sum of each class's support maps, ``(n_way, *map_shape)`` (Sung et al., sec. 3.2)."""
    flat = maps.flatten(1)
    sums = flat.new_zeros(n_way, flat.shape[1]).index_add(0, y, flat)
    return sums.view(n_way, *maps.shape[1:])


@LEARNERS.register(
    "relationnet", help="Relation Network (Sung et al., 2018): embedding + learned relation module"
)
class RelationNet(Learner):
    """Metric learning with a learned comparison; adaptation embeds the support set."""

    any_way = True
    model_needs: ClassVar[dict[str, object]] = {"relation_module": True}

    def __init__(self, model, loss_fn, cfg, train_classes=None) -> None:
        if not hasattr(model, "relation"):
            raise ValueError("the Relation Network needs a model built with relation_module=True")
        super().__init__(model, loss_fn, cfg, train_classes)

    def maps(self, params: Params, x: Tensor) -> Tensor:
        """Embeddings of ``x`` as feature maps ``(N, *model.feature_map)``."""
        return self.features(params, x).view(len(x), *self.model.feature_map)

    def relation_scores(self, params: Params, classes: Tensor, queries: Tensor) -> Tensor:
        """Scores before the sigmoid, ``(n_query, n_way)``, of every (class, query) pair: the
        class map first, then the query map, along channels."""
        n_query, n_way = len(queries), len(classes)
        pairs = torch.cat(
            [
                classes[None].expand(n_query, *classes.shape),
                queries[:, None].expand(n_query, n_way, *queries.shape[1:]),
            ],
            dim=2,
        ).flatten(0, 1)
        inner = split_prefix(params, "relation.")[1]
        return functional_call(self.model.relation, inner, (pairs,), strict=True).view(
            n_query, n_way
        )

    def task_gradient(self, params: Params, task: Task) -> tuple[Params, float]:
        """Gradient of the MSE between the query set's relation scores and its one-hot
        labels (the head is unused, so its gradient is zero)."""
        n_way = n_way_of(task)
        protos = class_maps(self.maps(params, task.support_x), task.support_y, n_way)
        queries = self.maps(params, task.query_x)
        scores = torch.sigmoid(self.relation_scores(params, protos, queries))
        loss = F.mse_loss(scores, F.one_hot(task.query_y, n_way).to(scores.dtype))
        return loss_gradient(loss, params), loss.item()

    def adapt(
        self,
        params: Params,
        x: Tensor,
        y: Tensor,
        steps: int | None = None,
        lr: float | None = None,
    ) -> Params:
        """``params`` and the class maps of the support set ``(x, y)`` (``steps`` and ``lr``
        are unused: adaptation is one embedding pass)."""
        with torch.no_grad():
            detached = {k: v.detach() for k, v in params.items() if k != CLASS_MAPS}
            maps = class_maps(self.maps(detached, x), y, int(y.max()) + 1)
        return {**detached, CLASS_MAPS: maps}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Relation scores (before the sigmoid) of ``x`` against the adapted class maps; all
        zero, every class alike, before adaptation."""
        if CLASS_MAPS not in params:
            return x.new_zeros(len(x), self.model.head.out_features)
        model_params = {k: v for k, v in params.items() if k != CLASS_MAPS}
        return self.relation_scores(model_params, params[CLASS_MAPS], self.maps(model_params, x))

"""FOMAML: first-order model-agnostic meta-learning.

Finn, Abbeel and Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML, section 5.2 ("first-order approximation"). The inner loop is MAML's, but its
gradients are treated as constants (no ``create_graph``), so the meta-gradient of a task is the
gradient of its query loss evaluated at the adapted parameters, applied to the meta-parameters.

Settings: the paper's first-order runs use MAML's (section 5.2), and so do fedmeta's defaults;
see the table in :mod:`fedmeta.learners.maml`.
"""

from __future__ import annotations

from typing import ClassVar

from fedmeta.learners.base import LEARNERS
from fedmeta.learners.maml import MAML


@LEARNERS.register("fomaml", help="first-order MAML: query gradient at the adapted params")
class FOMAML(MAML):
    """First-order MAML.

    For one task with support loss ``L_s`` and query loss ``L_q``, the meta-gradient is
    ``grad L_q(phi)`` with ``phi = U(w)`` the result of ``inner_steps`` SGD steps of size
    ``inner_lr`` on ``L_s`` from ``w``; the Jacobian ``dphi/dw`` is replaced by the identity.
    The meta-gradient of a meta-batch is the mean over its tasks; the default
    :meth:`~fedmeta.learners.base.Learner.local_update` feeds it to the outer optimizer.

    Notes
    -----
    Written out for ``inner_steps = k`` and inner learning rate ``a``::

        phi_0 = w
        phi_j = phi_{j-1} - a * grad L_s(phi_{j-1})      (j = 1..k, gradients are constants)
        g     = grad L_q(phi_k)

    Second-order MAML would return ``(I - a H_s(phi_0)) ... (I - a H_s(phi_{k-1})) g`` instead,
    where ``H_s`` is the Hessian of the support loss; FOMAML drops every Hessian term.

    Cost: no double backward and no graph kept across inner steps, so memory does not grow with
    ``inner_steps``. With ``inner_steps = 0`` the update is plain training on the query sets.
    Evaluation uses the shared :meth:`~fedmeta.learners.base.Learner.adapt` (``eval_inner_steps``
    SGD steps on the support set), the same as MAML's. Per-FedAvg (FO)
    (:mod:`fedmeta.learners.perfedavg`) has the same form but draws its inner and outer batches
    at random from a task's pooled examples, not as the support and query sets.

    Attributes
    ----------
    first_order : bool
        Always ``True``; see :class:`~fedmeta.learners.maml.MAML`.
    """

    first_order: ClassVar[bool] = True
    supports_example_dp: ClassVar[bool] = True

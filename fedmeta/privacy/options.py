"""``[privacy]``: every privacy knob of a scenario, validated once.

Client-level central DP (McMahan, Ramage, Talwar and Zhang, 2018, "Learning Differentially
Private Recurrent Language Models", ICLR: DP-FedAvg) is Flower's DP strategy wrappers, picked by
``central``; clipping is fixed or adaptive (Andrew, Thakkar, McMahan and Ramaswamy, 2021,
"Differentially Private Learning with Adaptive Clipping", NeurIPS), on the server or on the
clients. ``noise-multiplier`` sets the noise directly; ``target-epsilon`` instead derives it for
the planned number of rounds (``inf`` means no noise, with clipping kept, so a sweep isolates the
cost of the noise).

``local-epsilon`` adds local DP with Flower's ``LocalDpMod`` (below 1: it uses the classical
Gaussian mechanism). ``example-noise-multiplier`` turns on DP-SGD inside first-order learners
(Li, Khodak, Caldas and Talwalkar, 2020, "Differentially Private Meta-Learning", ICLR:
task-global DP). ``secure-aggregation`` runs Flower's SecAgg+ (Bell et al., 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS). ``audit`` runs the
membership-inference audit of :mod:`fedmeta.privacy.audit` on the final meta-parameters; it
holds back ``audit-holdout`` of every training client's examples from training, as the
non-members.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from fedmeta.options import Options, kebab

CentralMode = Literal["none", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive"]


class PrivacyOptions(Options):
    central: CentralMode = "none"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    clipping_norm: float = Field(1.0, gt=0)
    target_quantile: float = Field(0.5, ge=0, le=1)
    clip_lr: float = Field(0.2, gt=0)
    accountant: Literal["rdp", "prv"] = "rdp"
    local_epsilon: float | None = Field(None, gt=0, lt=1)
    local_delta: float = 1e-5
    example_noise_multiplier: float | None = None
    example_clipping_norm: float = Field(1.0, gt=0)
    secure_aggregation: bool = False
    secagg_shares: int = Field(0, ge=0)
    """Shares of each client's secrets (0: one per sampled client); otherwise at least 3."""
    secagg_threshold: int = Field(0, ge=0)
    secagg_clipping_range: float = Field(8.0, gt=0)
    audit: bool = False
    audit_clients: int = Field(10, ge=1)
    audit_tasks: int = Field(20, ge=1)
    audit_holdout: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> PrivacyOptions:
        # each message names the key and the fix (it becomes the one-line error)
        for key in ("noise_multiplier", "example_noise_multiplier"):
            value = getattr(self, key)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{kebab(key)} = {value} must be a finite number >= 0")
        for key in ("delta", "local_delta"):
            value = getattr(self, key)
            if not 0 < value < 1:
                raise ValueError(f"{kebab(key)} = {value} must be in (0, 1), e.g. 1e-5")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ValueError(f"target-epsilon = {self.target_epsilon} must be > 0 (inf: no noise)")
        if self.central == "none":
            if self.noise_multiplier is not None or self.target_epsilon is not None:
                raise ValueError(
                    "noise-multiplier and target-epsilon need central DP; "
                    "set central = 'server-fixed' (or another mode)"
                )
        elif (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                f"central = {self.central!r} needs exactly one of noise-multiplier "
                "and target-epsilon"
            )
        if self.secure_aggregation and self.central.startswith("server"):
            raise ValueError(
                f"central = {self.central!r} clips on the server, which secure aggregation "
                "hides the updates from; use central = 'client-fixed'"
            )
        if self.secure_aggregation and self.central == "client-adaptive":
            raise ValueError(
                "central = 'client-adaptive' needs every client's clipped bit, which secure "
                "aggregation does not reveal; use central = 'client-fixed'"
            )
        if self.secagg_shares in (1, 2):
            raise ValueError(
                f"secagg-shares = {self.secagg_shares}: SecAgg+ needs at least 3 shares "
                "(or 0 for one per sampled client)"
            )
        if self.secagg_shares and self.secagg_threshold >= self.secagg_shares:
            raise ValueError("secagg-threshold must be smaller than secagg-shares")
        return self

    @property
    def central_dp(self) -> bool:
        return self.central != "none"

    @property
    def dp(self) -> bool:
        """Whether any differential-privacy mechanism is on (central, local or DP-SGD)."""
        return (
            self.central_dp
            or self.local_epsilon is not None
            or self.example_noise_multiplier is not None
        )

    @property
    def active(self) -> bool:
        return self != PrivacyOptions()

"""Client mods: behaviour wrapped around the ClientApp's handlers, outside every learner."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedmeta.adversary import ADVERSARY, attack_weights
from fedmeta.experiment import TRAIN, experiment_from_json, rng_for


def byzantine_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Replace a Byzantine client's training reply by its attack (see :mod:`fedmeta.adversary`);
    honest clients, and every client without ``[adversary]``, pass through unchanged."""
    reply = call_next(msg, context)
    exp = experiment_from_json(str(msg.content["config"]["scenario"]))
    pid = int(context.node_config["partition-id"])
    if reply.has_error() or pid not in exp.byzantine:
        return reply
    sent = msg.content["arrays"].to_torch_state_dict()
    honest = reply.content["arrays"].to_torch_state_dict()
    rnd = int(msg.content["config"]["server-round"])
    rng = rng_for(exp.scenario.seed, ADVERSARY, TRAIN, rnd, pid)
    reply.content["arrays"] = ArrayRecord(attack_weights(exp.scenario.adversary, sent, honest, rng))
    return reply

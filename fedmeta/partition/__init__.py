"""Who holds what: partitioners, client shards and the layout of a run (:mod:`.layout`), and a
printed and plotted view of a layout (:mod:`.report`, imported on demand)."""

from fedmeta.partition.layout import (
    PARTITIONERS,
    Layout,
    Partitioner,
    Shard,
    build_layout,
    holdout_split,
    power_law_sizes,
)

__all__ = [
    "PARTITIONERS",
    "Layout",
    "Partitioner",
    "Shard",
    "build_layout",
    "holdout_split",
    "power_law_sizes",
]

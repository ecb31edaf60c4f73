"""fedmeta: a federated few-shot meta-learning simulator built on Flower."""

__version__ = "0.1.0"

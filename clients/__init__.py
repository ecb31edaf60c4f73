"""The Flower ClientApp of fedmeta: simulated hospitals that train locally or evaluate."""

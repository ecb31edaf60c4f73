"""The Flower ServerApp of fedmeta: strategies, sampling, held-out evaluation, the round loop."""

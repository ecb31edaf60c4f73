"""The top layer: runs scenarios and studies on Flower's simulation engine, and the CLI.

It imports the core (:mod:`fedmeta`) and both Flower apps (:mod:`clients`, :mod:`server`);
nothing imports it.
"""

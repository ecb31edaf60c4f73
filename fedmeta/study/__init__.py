"""Studies: many runs of one scenario, compared or swept.

:mod:`.plan` validates the cells, :mod:`.manifest` keeps the study directory, :mod:`.adapt`
measures accuracy against adaptation steps, :mod:`.results` turns finished cells into CSVs and
a table, :mod:`.plots` draws them and :mod:`.report` writes both for ``fedmeta plot`` and
``fedmeta report``. Running the cells is the runner's job (``runner.study``). Reading results
needs neither torch nor Flower, so this package imports nothing here.
"""

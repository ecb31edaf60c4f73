"""User-facing errors.

Anything raised as :class:`FedmetaError` is bad input: the CLI prints its message on one line
and exits with code 2, without a traceback.
"""


class FedmetaError(Exception):
    """Bad input from the user (scenario, CLI value or data root).

    The message must name the offending key or value and say how to fix it.
    """

"""The one exception kind an operator is meant to read.

An OperatorError's message is complete on its own: what failed, on which node, which
config key, what to do. sando's provider host (provider_host.py) shows it as it is,
without a Python traceback, unless SANDO_DEBUG=1 asks for one.
"""


class OperatorError(Exception):
    pass


class ConfigError(OperatorError, ValueError):
    """Bad stack configuration; the message names the config key."""

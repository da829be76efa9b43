"""Errors that mean "the user asked for something wrong": the CLI prints them without traceback."""


class OpdfError(ValueError):
    """A user-facing error whose message says what is wrong and how to fix it."""


class ConfigError(OpdfError):
    """An invalid configuration (unknown key, bad value, missing file)."""

"""Errors that mean "the user asked for something wrong": the CLI prints them without traceback."""


class OpdfError(ValueError):
    """A user-facing error whose message says what is wrong and how to fix it."""


class ConfigError(OpdfError):
    """An invalid configuration (unknown key, bad value, missing file)."""


class DivergedError(OpdfError):
    """Training produced a loss or gradient that is not finite (NaN or inf); the CLI exits 3."""

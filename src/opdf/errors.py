"""Errors that mean "the user asked for something wrong": the CLI prints them without traceback."""


class OpdfError(ValueError):
    """A user-facing error whose message says what is wrong and how to fix it."""


class ConfigError(OpdfError):
    """An invalid configuration (unknown key, bad value, missing file)."""


class DivergedError(OpdfError):
    """Training produced a loss or gradient that is not finite (NaN or inf); the CLI exits 3."""


def yaml_problem(e: Exception) -> str:
    """The one-line gist of a PyYAML error (its own text spans several lines, with a snippet)."""
    parts = (getattr(e, "context", None), getattr(e, "problem", None))
    return ": ".join(str(p) for p in parts if p) or " ".join(str(e).split())


def yaml_file_error(path: object, e: Exception) -> ConfigError:
    """``PATH, line L, column C: not valid YAML (gist)``: one line, for a config or a suite."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    return ConfigError(f"{where}: not valid YAML ({yaml_problem(e)})")

"""Old path of :mod:`opdf.models.quiet`."""

from opdf.models.quiet import quiet_transformers  # noqa: F401

"""Result tables from run summaries (``opdf report``)."""

from opdf.report.tables import find_summaries, format_table, group_rows, load_rows, variant

__all__ = ["find_summaries", "format_table", "group_rows", "load_rows", "variant"]

"""MkDocs hook: serve the repository's ``benchmarks/results/`` (plots, tables, result notes) at
the same paths as in the repository, so the Results page links them exactly as the README did,
and a link to a result that does not exist fails the strict build."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
SERVED = ("benchmarks/results",)
SUFFIXES = {".png", ".csv", ".svg"}


def on_files(files: Files, config) -> Files:
    for folder in SERVED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES:
                rel = path.relative_to(ROOT).as_posix()
                files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files

"""GLUE tasks from a folder in the official GLUE TSV layout (as the GLUE download script writes).

No GLUE data ships in any package this project can install, so nothing is downloaded: point the
loader at a folder you already have, either the task folder (holding ``train.tsv`` and ``dev.tsv``)
or the GLUE root holding the official task folders (``CoLA``, ``SST-2``, ``MRPC``, ``STS-B``,
``QQP``, ``MNLI``, ``QNLI``, ``RTE``).

Splits follow the paper (and LGTM's code): GLUE test labels are not public, so ``train`` is GLUE
train, and the GLUE dev set is cut into two halves: ``dev`` (first half in file order, used for
checkpoint selection) and ``test`` (second half, reported). With an odd count, ``dev`` gets the
extra example. ``dev_split="random"`` instead makes a seeded, stratified half split.

Layouts read (tab-separated, no quoting, rows with the wrong number of fields are skipped and
counted in ``info["skipped"]``, as for the few malformed QQP rows):

======  ==================================  ============================  ==================
task    text / text pair                    label                         metric (main)
======  ==================================  ============================  ==================
cola    no header: col 3 (sentence)         col 1: 0/1                    mcc
sst2    sentence                            label: 0/1                    accuracy
mrpc    #1 String / #2 String               Quality: 0/1                  f1, accuracy (f1)
stsb    sentence1 / sentence2               score: 0..5 (regression)      pearson, spearman
qqp     question1 / question2               is_duplicate: 0/1             f1, accuracy (f1)
mnli    sentence1 / sentence2               gold_label: 3 classes         accuracy
qnli    question / sentence                 label: (not_)entailment       accuracy
rte     sentence1 / sentence2               label: (not_)entailment       accuracy
======  ==================================  ============================  ==================

``mnli`` uses ``dev_matched.tsv``; ``mnli-mm`` uses ``dev_mismatched.tsv`` (same train).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from opdf.data.dataset import TextDataset, TextSplit, split_indices
from opdf.data.files import read_text
from opdf.data.metrics import get_metric
from opdf.errors import OpdfError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    folder: str  # official folder name in the GLUE root
    text: str | int  # column name, or column index for header-less files
    label: str | int
    metric: str
    pair: str | int | None = None
    raw_labels: tuple[str, ...] | None = None  # values in the file, in class-id order
    label_names: tuple[str, ...] | None = None  # None: same as raw_labels
    header: bool = True
    dev_file: str = "dev.tsv"
    n_columns: int | None = None  # header-less files: expected field count

    @property
    def is_regression(self) -> bool:
        return self.raw_labels is None


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = dict(
    folder="MNLI",
    text="sentence1",
    pair="sentence2",
    label="gold_label",
    metric="accuracy",
    raw_labels=("entailment", "neutral", "contradiction"),
)

GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "CoLA", text=3, label=1, metric="mcc", raw_labels=_BIN,
        label_names=("unacceptable", "acceptable"), header=False, n_columns=4,
    ),
    "sst2": GlueTask(
        "SST-2", text="sentence", label="label", metric="accuracy", raw_labels=_BIN,
        label_names=("negative", "positive"),
    ),
    "mrpc": GlueTask(
        "MRPC", text="#1 String", pair="#2 String", label="Quality", metric="f1",
        raw_labels=_BIN, label_names=("not_equivalent", "equivalent"),
    ),
    "stsb": GlueTask(
        "STS-B", text="sentence1", pair="sentence2", label="score", metric="pearson_spearman"
    ),
    "qqp": GlueTask(
        "QQP", text="question1", pair="question2", label="is_duplicate", metric="f1",
        raw_labels=_BIN, label_names=("not_duplicate", "duplicate"),
    ),
    "mnli": GlueTask(**_MNLI, dev_file="dev_matched.tsv"),
    "mnli-mm": GlueTask(**_MNLI, dev_file="dev_mismatched.tsv"),
    "qnli": GlueTask(
        "QNLI", text="question", pair="sentence", label="label", metric="accuracy",
        raw_labels=_NLI2,
    ),
    "rte": GlueTask(
        "RTE", text="sentence1", pair="sentence2", label="label", metric="accuracy",
        raw_labels=_NLI2,
    ),
}  # fmt: skip

#: accepted spellings -> canonical task name
ALIASES = {
    "sst-2": "sst2",
    "sts-b": "stsb",
    "mnli-m": "mnli",
    "mnli_matched": "mnli",
    "mnli-matched": "mnli",
    "mnli_mismatched": "mnli-mm",
    "mnli-mismatched": "mnli-mm",
}


def glue_task(task: str) -> GlueTask:
    key = ALIASES.get(task.lower(), task.lower())
    if key not in GLUE_TASKS:
        raise OpdfError(f"unknown GLUE task {task!r}; valid tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def _task_dir(folder: Path, spec: GlueTask) -> Path:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"GLUE folder {folder} does not exist")
    if (folder / "train.tsv").is_file():
        return folder
    for name in (spec.folder, spec.folder.lower(), spec.folder.replace("-", "")):
        if (folder / name / "train.tsv").is_file():
            return folder / name
    raise FileNotFoundError(
        f"no train.tsv in {folder} nor in {folder / spec.folder}: give the GLUE task folder "
        f"or the GLUE root holding {spec.folder}/"
    )


def _column(spec_col: str | int, header: list[str] | None, path: Path) -> int:
    if isinstance(spec_col, int):
        return spec_col
    assert header is not None
    if spec_col not in header:
        raise OpdfError(
            f"{path}: missing column {spec_col!r}; available columns: {', '.join(header)}"
        )
    return header.index(spec_col)


def read_glue_tsv(path: Path, spec: GlueTask) -> tuple[TextSplit, int]:
    """Read one GLUE TSV file; returns ``(split, number of skipped rows)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file {path} does not exist")
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t",
                        quoting=csv.QUOTE_NONE)  # fmt: skip
    try:
        rows = list(reader)
    except csv.Error as e:
        raise OpdfError(f"{path}, line {reader.line_num}: {e}") from None
    header = None
    if spec.header:
        if not rows:
            raise OpdfError(f"{path} is empty: expected a header row")
        header, rows = rows[0], rows[1:]
    width = len(header) if header is not None else spec.n_columns
    cols = [_column(c, header, path) for c in (spec.text, spec.pair, spec.label) if c is not None]
    if width is not None and max(cols) >= width:
        raise OpdfError(f"{path}: expected at least {max(cols) + 1} columns, found {width}")
    ti = _column(spec.text, header, path)
    pi = None if spec.pair is None else _column(spec.pair, header, path)
    li = _column(spec.label, header, path)
    lookup = None if spec.raw_labels is None else {v: i for i, v in enumerate(spec.raw_labels)}

    texts, pairs, labels, skipped = [], [], [], 0
    for row in rows:
        if (width is not None and len(row) != width) or len(row) <= max(cols):
            skipped += 1
            continue
        raw = row[li].strip()
        if lookup is None:
            try:
                label = float(raw)
            except ValueError:
                skipped += 1
                continue
        elif raw in lookup:
            label = lookup[raw]
        else:
            skipped += 1
            continue
        texts.append(row[ti])
        labels.append(label)
        if pi is not None:
            pairs.append(row[pi])
    if rows and not texts:
        raise OpdfError(
            f"{path}: none of {len(rows)} rows could be read as GLUE {spec.folder} "
            f"(labels expected: {', '.join(spec.raw_labels or ('numbers',))})"
        )
    if skipped:
        log.warning("%s: skipped %d malformed row(s)", path, skipped)
    return TextSplit(texts, labels, pairs if pi is not None else None), skipped


def load_glue(
    task: str,
    data_dir: str | Path,
    dev_split: str = "halves",
    split_seed: int = 42,
) -> TextDataset:
    """Load GLUE ``task`` from ``data_dir`` (task folder or GLUE root); see the module docstring."""
    spec = glue_task(task)
    name = ALIASES.get(task.lower(), task.lower())
    folder = _task_dir(Path(data_dir), spec)
    train, skipped_train = read_glue_tsv(folder / "train.tsv", spec)
    full_dev, skipped_dev = read_glue_tsv(folder / spec.dev_file, spec)
    n = len(full_dev)
    n_test = n // 2
    if dev_split == "halves":
        dev, test = full_dev.select(range(n - n_test)), full_dev.select(range(n - n_test, n))
    elif dev_split == "random":
        a, b = split_indices(full_dev.labels, [n - n_test, n_test], split_seed, spec.is_regression)
        dev, test = full_dev.select(a), full_dev.select(b)
    else:
        raise OpdfError(f"dev_split must be 'halves' or 'random', got {dev_split!r}")
    fn, main = get_metric(spec.metric)
    names = spec.label_names or spec.raw_labels
    return TextDataset(
        name=f"glue:{name}",
        train=train,
        dev=dev,
        test=test,
        num_labels=1 if spec.is_regression else len(spec.raw_labels),
        metric=fn,
        main_metric=main,
        label_names=None if names is None else list(names),
        info={
            "source": str(folder),
            "dev_file": spec.dev_file,
            "dev_split": dev_split,
            "skipped": {"train": skipped_train, "dev": skipped_dev},
        },
    )

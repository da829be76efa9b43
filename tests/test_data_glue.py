"""GLUE loader on small TSV files written in the official GLUE layouts (no GLUE data ships here)."""

import numpy as np
import pytest

from opdf.data import GLUE_TASKS, load_text_dataset

S1 = [
    'He said "no',  # an unbalanced quote: GLUE files are read without quoting
    "The cat sat on the mat.",
    "Stocks fell sharply on Monday.",
    "A man is playing a guitar.",
    "It rained all day, so we stayed in.",
    "Nobody knows the answer.",
    "She sold the house last year.",
    "The committee approved the plan.",
]
S2 = [
    "He refused.",
    "A cat is on a mat.",
    "Markets dropped on Monday.",
    "A person plays an instrument.",
    "We went out in the sun.",
    "Everyone knows it.",
    "The house was sold by her.",
    "The plan was rejected.",
]


def _write(path, header, rows):
    lines = ([header] if header is not None else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _rows(task, n, offset):
    """Rows in the official layout of ``task``; returns (header, rows, expected label ids)."""
    idx = [(offset + i) % len(S1) for i in range(n)]
    b = [(offset + i) % 2 for i in range(n)]  # binary labels 0/1 alternating
    nli3 = ["entailment", "neutral", "contradiction"]
    if task == "cola":
        rows = [("gj04", b[i], "" if b[i] else "*", S1[j]) for i, j in enumerate(idx)]
        return None, rows, b
    if task == "sst2":
        return "sentence\tlabel", [(S1[j], b[i]) for i, j in enumerate(idx)], b
    if task == "mrpc":
        rows = [(b[i], 1000 + j, 2000 + j, S1[j], S2[j]) for i, j in enumerate(idx)]
        return "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", rows, b
    if task == "stsb":
        scores = [round(5.0 * ((offset + i) % 6) / 5, 3) for i in range(n)]
        rows = [
            (i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", S1[j], S2[j], s)
            for (i, j), s in zip(enumerate(idx), scores, strict=True)
        ]
        head = (
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        )
        return head, rows, scores
    if task == "qqp":
        rows = [(i, 2 * i, 2 * i + 1, S1[j], S2[j], b[i]) for i, j in enumerate(idx)]
        return "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", rows, b
    if task in ("mnli", "mnli-mm"):
        lab = [(offset + i) % 3 for i in range(n)]
        parse = "( x )"
        rows = [
            (i, 100 + i, f"{100 + i}e", "fiction", parse, parse, parse, parse, S1[j], S2[j])
            for i, j in enumerate(idx)
        ]
        head = (
            "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
            "sentence1_parse\tsentence2_parse\tsentence1\tsentence2"
        )
        return head, rows, lab, nli3  # labels appended by the caller (train vs dev layouts)
    nli2 = ["entailment", "not_entailment"]
    if task == "qnli":
        rows = [(i, S1[j], S2[j], nli2[b[i]]) for i, j in enumerate(idx)]
        return "index\tquestion\tsentence\tlabel", rows, b
    if task == "rte":
        rows = [(i, S1[j], S2[j], nli2[b[i]]) for i, j in enumerate(idx)]
        return "index\tsentence1\tsentence2\tlabel", rows, b
    raise AssertionError(task)


FOLDERS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
}
N_TRAIN, N_DEV = 8, 7


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    """A GLUE root with all 8 task folders; returns (root, expected labels per task/file)."""
    root = tmp_path_factory.mktemp("glue")
    expected = {}
    for task, folder in FOLDERS.items():
        d = root / folder
        d.mkdir()
        if task == "mnli":
            for fname, n, off, n_annot in (
                ("train.tsv", N_TRAIN, 0, 1),
                ("dev_matched.tsv", N_DEV, 1, 5),
                ("dev_mismatched.tsv", N_DEV + 2, 2, 5),
            ):
                head, rows, lab, names = _rows("mnli", n, off)
                annot = "\t".join(f"label{k}" for k in range(1, n_annot + 1))
                full = [
                    (*r, *([names[y]] * n_annot), names[y]) for r, y in zip(rows, lab, strict=True)
                ]
                _write(d / fname, f"{head}\t{annot}\tgold_label", full)
                expected[("mnli", fname)] = lab
            continue
        for fname, n, off in (("train.tsv", N_TRAIN, 0), ("dev.tsv", N_DEV, 1)):
            head, rows, lab = _rows(task, n, off)
            if task == "qqp" and fname == "train.tsv":
                rows = [*rows, ("999", "1", "2", "a malformed row with too few fields")]
            _write(d / fname, head, rows)
            expected[(task, fname)] = lab
    return root, expected


@pytest.mark.parametrize("task", list(FOLDERS))
def test_every_task_loads_with_official_layout(glue_root, task):
    root, expected = glue_root
    ds = load_text_dataset(f"glue:{task}:{root / FOLDERS[task]}")
    spec = GLUE_TASKS[task]
    dev_file = "dev_matched.tsv" if task == "mnli" else "dev.tsv"
    dev_labels = expected[(task, dev_file)]
    assert ds.name == f"glue:{task}"
    assert len(ds.train) == N_TRAIN  # the malformed QQP row is skipped
    # GLUE dev is halved: first half (extra example) -> dev, second half -> test
    assert (len(ds.dev), len(ds.test)) == (4, 3)
    assert ds.train.labels == expected[(task, "train.tsv")]
    assert ds.dev.labels + ds.test.labels == dev_labels
    assert (ds.train.text_pairs is None) == (task in ("cola", "sst2"))
    assert ds.train.texts[0] == S1[0]  # the unbalanced quote survives as text
    if ds.train.text_pairs is not None:
        assert ds.train.text_pairs[0] == S2[0]
    assert ds.is_regression == (task == "stsb")
    assert ds.num_labels == {"stsb": 1, "mnli": 3}.get(task, 2)
    assert ds.main_metric == {"cola": "mcc", "mrpc": "f1", "qqp": "f1", "stsb": "combined"}.get(
        task, "accuracy"
    )
    # perfect predictions score 1 on the main metric (logits for classification)
    y = np.asarray(ds.test.labels)
    preds = y if ds.is_regression else np.eye(ds.num_labels)[y.astype(int)]
    if task == "cola":  # MCC needs both classes in the half it scores
        y = np.asarray(ds.dev.labels)
        preds = np.eye(2)[y]
    assert ds.metric(preds, y)[ds.main_metric] == pytest.approx(1.0)
    assert spec.folder == FOLDERS[task]


def test_glue_root_folder_and_option_forms(glue_root):
    root, expected = glue_root
    a = load_text_dataset(f"glue:rte:{root}")  # the GLUE root: finds RTE/
    b = load_text_dataset("glue", task="rte", data_dir=root)
    c = load_text_dataset("glue:RTE", data_dir=root / "RTE")
    for ds in (b, c):
        assert ds.train.texts == a.train.texts and ds.test.labels == a.test.labels


def test_mnli_mismatched_uses_its_own_dev_file(glue_root):
    root, expected = glue_root
    m = load_text_dataset(f"glue:mnli:{root}")
    mm = load_text_dataset(f"glue:mnli-mm:{root}")
    assert m.train.texts == mm.train.texts
    assert len(mm.dev) + len(mm.test) == N_DEV + 2
    assert mm.dev.labels + mm.test.labels == expected[("mnli", "dev_mismatched.tsv")]
    assert m.label_names == ["entailment", "neutral", "contradiction"]


def test_random_dev_split_is_deterministic_and_a_partition(glue_root):
    root, _ = glue_root
    a = load_text_dataset(f"glue:sst2:{root}", dev_split="random", split_seed=3)
    b = load_text_dataset(f"glue:sst2:{root}", dev_split="random", split_seed=3)
    halves = load_text_dataset(f"glue:sst2:{root}")
    assert a.dev.texts == b.dev.texts and a.test.texts == b.test.texts
    assert sorted(a.dev.texts + a.test.texts) == sorted(halves.dev.texts + halves.test.texts)


def test_glue_errors(glue_root, tmp_path):
    root, _ = glue_root
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'.*cola, sst2"):
        load_text_dataset(f"glue:wnli:{root}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_dataset(f"glue:rte:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="no train.tsv"):
        load_text_dataset(f"glue:rte:{tmp_path}")
    with pytest.raises(ValueError, match="needs a task and a folder"):
        load_text_dataset("glue:rte")
    bad = tmp_path / "RTE"
    bad.mkdir()
    _write(bad / "train.tsv", "index\tpremise\thypothesis\tlabel", [(0, "a", "b", "entailment")])
    _write(bad / "dev.tsv", "index\tpremise\thypothesis\tlabel", [(0, "a", "b", "entailment")])
    with pytest.raises(ValueError, match="missing column 'sentence1'; available columns: index"):
        load_text_dataset(f"glue:rte:{bad}")
    with pytest.raises(ValueError, match="unknown option"):
        load_text_dataset(f"glue:rte:{root}", text_column="x")


def test_empty_dev_file_is_an_error(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    _write(d / "train.tsv", "sentence\tlabel", [("good", 1), ("bad", 0)])
    _write(d / "dev.tsv", "sentence\tlabel", [])
    with pytest.raises(ValueError, match="empty"):
        load_text_dataset(f"glue:sst2:{d}")

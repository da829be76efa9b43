"""The pieces of data parallelism that need no second process: shards, the batch rule, dropout."""

from __future__ import annotations

import pytest
from torch import nn

from opdf.errors import OpdfError
from opdf.models import set_dropout
from opdf.run.distributed import SINGLE, DistEnv, all_gather_object, on_main, shard


def test_shards_are_contiguous_cover_the_batch_and_differ_by_at_most_one():
    for n in range(0, 12):
        for world in (1, 2, 3, 4):
            parts = [shard(list(range(n)), DistEnv(r, world)) for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_process_helpers_are_plain_calls():
    assert shard([1, 2, 3], SINGLE) == [1, 2, 3]
    assert all_gather_object({"a": 1}, SINGLE) == [{"a": 1}]
    assert on_main(lambda: 7, SINGLE) == 7
    with pytest.raises(OpdfError, match="boom"):
        on_main(lambda: (_ for _ in ()).throw(OpdfError("boom")), SINGLE)


def test_the_global_batch_must_split_over_processes_and_micro_batches(tmp_path):
    from opdf.data import load_text_dataset
    from opdf.distill.finetune import FineTune
    from opdf.models import load_model
    from opdf.run.trainer import Trainer, TrainSettings

    data = load_text_dataset("configs/data/smoke-sentiment.csv")
    model, tokenizer = load_model("tiny-bert", data.num_labels)
    settings = TrainSettings(batch_size=12, grad_accum=4, max_steps=1)
    Trainer(FineTune(model, None), data, tokenizer, settings, tmp_path)  # 12 = 4 x 3: fine
    with pytest.raises(OpdfError, match="global batch.*2 processes.*multiple of 8"):
        Trainer(FineTune(model, None), data, tokenizer, settings, tmp_path,
                dist=DistEnv(0, 2))  # fmt: skip


def test_set_dropout_sets_every_dropout_module_and_the_config():
    from opdf.models import load_model

    model, _ = load_model("tiny-bert", 2)
    set_dropout(model, 0.0)
    rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.0}
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.0

"""opdf.accumulate under DistributedDataParallel (2 CPU processes, gloo): DDP's no_sync for the
first micro-batches and Accumulation.carry() for the last give one contraction and one gradient
all-reduce per optimizer step, and the gradients of a 2 x 2 micro-batch step equal one process
computing the whole batch."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import BertConfig, BertForSequenceClassification

import opdf
import opdf.overparam as op

BATCH, MICRO, WORLD = 8, 2, 2  # global batch 8 = 2 ranks x 2 micro-batches x 2 examples


def model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return opdf.overparameterize(BertForSequenceClassification(cfg), unit_modes=2).train()


def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 64, (BATCH, 12), generator=g),
            "labels": torch.randint(0, 2, (BATCH,), generator=g)}  # fmt: skip


def _worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)  # fmt: skip
    try:
        results = {f: _one_step(rank, f) for f in (False, True)}
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def _one_step(rank: int, find_unused: bool) -> dict:
    """One optimizer step's gradients under DDP (find_unused_parameters as given), counting the
    contractions and the bucket reductions."""
    net = model()
    ddp = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=find_unused)
    reductions = []

    def counting_hook(state, bucket):
        reductions.append(bucket.index())
        fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0] / WORLD)

    ddp.register_comm_hook(None, counting_hook)
    contractions = {"n": 0}
    real = op.contract

    def counting(cs):
        contractions["n"] += 1
        return real(cs)

    op.contract = counting
    batch = data()
    per_rank = BATCH // WORLD
    mine = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}
    micro = [{k: v[i : i + MICRO] for k, v in mine.items()} for i in range(0, per_rank, MICRO)]
    reduced_before_last = None
    with opdf.accumulate(net) as acc:
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            if last:
                reduced_before_last = len(reductions)
                extra = acc.carry()
                ctx = contextlib.nullcontext()  # the synced backward
            else:
                extra = 0.0
                ctx = ddp.no_sync()
            with ctx:
                (ddp(**mb).loss / len(micro) + extra).backward()
    op.contract = real
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return {"grads": grads, "contractions": contractions["n"],
            "reductions": len(reductions), "before_last": reduced_before_last,
            "buckets": len(set(reductions))}  # fmt: skip


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    """Both DDP modes, in one pair of spawned processes (spawning is the slow part)."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "rank0.pt"
    mp.spawn(_worker, args=(str(tmp / "init"), str(out)), nprocs=WORLD)
    return torch.load(out)


@pytest.mark.parametrize("find_unused", [False, True])
def test_accumulate_and_no_sync_give_one_contraction_and_one_all_reduce(two_processes,
                                                                        find_unused):  # fmt: skip
    got = two_processes[find_unused]
    net = model()
    n_weights = len(opdf.cores(net))
    assert got["contractions"] == n_weights  # once per weight for the whole step
    assert got["before_last"] == 0  # nothing reduced during the no_sync micro-batches
    assert got["reductions"] == got["buckets"]  # every bucket reduced exactly once
    # the same gradient as one process on the whole global batch
    batch = data()
    net(**batch).loss.backward()
    for name, p in net.named_parameters():
        if p.grad is None:
            continue
        assert name in got["grads"], name
        torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)

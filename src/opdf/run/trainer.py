"""The training loop shared by every method (and by teacher fine-tuning).

:class:`Trainer` takes a :class:`opdf.distill.Distiller`, a dataset (text, with the model's
tokenizer, or images) and owns: deterministic batching (one seeded permutation per epoch, so a
resumed run sees the same batches; image batches are augmented per image from the seed and the
epoch), the optimizers the method configures (AdamW, fused where the parameters allow, with a
linear warmup/decay schedule), gradient accumulation (one MPO contraction per optimizer step through
:func:`opdf.accumulate`), the alignment loss when on (logged in total and per module group),
clipping, tqdm progress, ``metrics.jsonl`` and, with ``log_to`` naming it, the same numbers as
TensorBoard scalars (:mod:`opdf.run.tblog`), best-on-dev selection, atomic periodic checkpoints
and exact resume, and at the end the merge of the best student, its evaluation on dev and test
(logged too), ``student/`` and ``summary.json``.

:meth:`Trainer.fit` is a short loop over named steps that share a :class:`TrainState`:
:meth:`~Trainer.train_step` (which calls :meth:`~Trainer.forward_backward`),
:meth:`~Trainer.evaluate_and_keep_best`, :meth:`~Trainer.save_checkpoint` (what it saves is
collected in :meth:`~Trainer.checkpoint_state`, in the layout of :mod:`opdf.run.checkpoint`), and
:meth:`~Trainer.finish` (the end stage, :mod:`opdf.run.finish`). The settings are a
:class:`~opdf.run.settings.TrainSettings`, the shared bookkeeping a
:class:`~opdf.run.state.TrainState` (both importable from here too).

Data parallel (``torchrun``, :mod:`opdf.run.distributed`): ``batch_size`` stays the global batch
of an optimizer step; each rank builds its contiguous shard of it, runs its
``grad_accum`` micro-batches (all but the last under DDP's ``no_sync``, the last carrying the
one contraction's gradient, :meth:`opdf.overparam.Accumulation.carry`), and DDP all-reduces the
cores' gradients once. Every rank evaluates a shard of dev/test and the logits are gathered, so
all ranks take the same decisions; rank 0 alone writes files. ``precision: bf16`` runs the
forwards under ``torch.autocast``; the contraction stays float32 (``bf16-contraction``: it too).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from opdf.data.views import split_views
from opdf.distill.base import Distiller, TrainContext
from opdf.errors import DivergedError, OpdfError
from opdf.overparam import accumulate, low_precision_contraction
from opdf.progress import progress_bar
from opdf.run import checkpoint as ckpt
from opdf.run import distributed, optim, owner
from opdf.run.distributed import SINGLE, DistEnv
from opdf.run.finish import (  # peak_*: also importable from here, as before
    merge_checked,
    peak_gpu_mb,  # noqa: F401
    peak_rss_mb,  # noqa: F401
    read_best,
    run_summary,
    write_results,
)
from opdf.run.metrics_log import METRICS_FILE, MetricsLog
from opdf.run.settings import TrainSettings
from opdf.run.state import TrainState
from opdf.run.tblog import require_tensorboard
from opdf.storage import cache_dir

# This many optimizer steps in a row without a gradient, none of them declared expected by the
# method (Distiller.no_gradient_expected), means the method trains nothing.
MAX_STEPS_WITHOUT_GRADIENT = 10
# on_nonfinite="skip": this many skipped steps in a row means the run has diverged for good
MAX_SKIPPED_IN_A_ROW = 10
NONFINITE_CHOICES = ("stop", "skip")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise OpdfError("device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Batches:
    """Deterministic training batches: epoch ``e`` uses ``randperm(n, seed + e)``; batch ``b`` of
    an epoch is slice ``b`` of that permutation (the last one may be short). ``view`` turns
    indices into a batch (:mod:`opdf.data.views`; image views augment by epoch)."""

    def __init__(self, view, batch_size: int, seed: int):
        self.view, self.batch_size, self.seed = view, batch_size, seed
        self.n = len(view)
        self.per_epoch = max(1, math.ceil(self.n / batch_size))
        self._epoch, self._perm = None, None

    def indices(self, step: int) -> list[int]:
        epoch, b = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).tolist()
        return self._perm[b * self.batch_size : (b + 1) * self.batch_size]

    def batch(self, step: int) -> dict:
        return self.view.batch(self.indices(step), epoch=step // self.per_epoch)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


class TrainStep(torch.nn.Module):
    """One micro-batch's forward as one module, so that DDP wraps (and, with
    ``find_unused_parameters``, traces) everything that carries a gradient: the method's losses,
    the alignment loss and the accumulation carry."""

    def __init__(self, distiller: Distiller, align=None):
        super().__init__()
        self.distiller = distiller
        self._align = [align]  # a list: its frozen teacher cores are no DDP buffers

    def forward(self, batch: dict, acc=None):
        carry = acc.carry() if acc is not None else None  # before the forward: see carry()
        _, losses = self.distiller.forward_train(batch)
        if self._align[0] is not None:
            losses["align"] = self._align[0]()
        return losses, carry


class Trainer:
    """Train ``distiller`` on ``dataset`` into ``output_dir`` (see the module docstring)."""

    def __init__(
        self,
        distiller: Distiller,
        dataset,
        tokenizer,
        settings: TrainSettings,
        output_dir: str | Path,
        *,
        align=None,
        device: torch.device | None = None,
        run_info: dict | None = None,
        progress: bool | None = None,
        desc: str = "train",
        config=None,
        resumable: bool = True,
        dist: DistEnv = SINGLE,
    ):
        self.distiller = distiller
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.s = settings
        self.out = Path(output_dir)
        self.align = align
        self.device = device or torch.device("cpu")
        self.run_info = dict(run_info or {})
        self.progress = progress
        self.desc = desc
        self.config = config
        # False: no last.pt, for a run that cannot resume anyway (a teacher fine-tune is written
        # to a temporary folder and starts over when killed)
        self.resumable = resumable
        self.dist = dist
        if settings.batch_size % (settings.grad_accum * dist.world_size):
            raise OpdfError(
                f"batch_size {settings.batch_size} is the global batch of an optimizer step: "
                f"with {dist.world_size} processes and grad_accum {settings.grad_accum} it must "
                f"be a multiple of {settings.grad_accum * dist.world_size}"
            )
        self._resuming = False  # set by _start: the optimizers are about to load a saved state
        self.data = split_views(
            dataset, tokenizer, max_length=settings.max_length, seed=settings.seed,
            channels_last=settings.channels_last,
        )  # fmt: skip
        self.micro = settings.batch_size // (settings.grad_accum * dist.world_size)  # per rank
        self.batches = Batches(self.data["train"], settings.batch_size, settings.seed)
        steps = settings.max_steps or math.ceil(settings.epochs * self.batches.per_epoch)
        self.total_steps = max(1, steps)
        self.eval_every = settings.eval_every or self.batches.per_epoch
        self.ckpt_dir = self.out / "checkpoints"
        self.step_module: torch.nn.Module = TrainStep(distiller, align)  # DDP-wrapped in _start
        self.log = MetricsLog(self.out, settings.log_to, is_main=dist.is_main)

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def autocast(self, training: bool = True) -> Iterator[None]:
        """The forwards' precision context: ``precision: bf16`` bf16 autocast; ``bf16-contraction``
        the same with the MPO contraction under it too (``low_precision_contraction``), in the
        training forwards only: an evaluation contracts in float32, as the merged student does."""
        with contextlib.ExitStack() as stack:
            if self.s.precision in ("bf16", "bf16-contraction"):
                stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
            if training and self.s.precision == "bf16-contraction":
                stack.enter_context(low_precision_contraction())
            yield

    def _own(self, *paths: str) -> None:
        """List files just written in the output folder as opdf's (:mod:`opdf.run.owner`): the
        only ones a later ``--overwrite`` may delete."""
        owner.record(self.out, *paths)

    def _eval_batches(self, split: str):
        view = self.data[split]
        order = view.eval_order()  # text: by length, less padding
        order = order[self.dist.rank :: self.dist.world_size]  # this rank's share
        bs = self.s.eval_batch_size
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            yield idx, view.batch(idx)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of the student alone on ``split`` (dev or test)."""
        was = self.distiller.training
        self.distiller.eval()
        n = len(self.data[split])
        logits = [None] * n
        mine: list[tuple[list[int], torch.Tensor]] = []
        try:
            for idx, batch in self._eval_batches(split):
                with self.autocast(training=False):
                    out = self.distiller.forward_eval(_to(batch, self.device))
                mine.append((idx, out.float().cpu()))
        finally:
            self.distiller.train(was)
        for part in distributed.all_gather_object(mine, self.dist):  # every rank's shard
            for idx, out in part:
                for j, i in enumerate(idx):
                    logits[i] = out[j]
        preds = torch.stack(logits)
        if not torch.isfinite(preds).all():  # weights blown up while the losses stayed finite
            bad = int((~torch.isfinite(preds)).any(-1).sum()) if preds.dim() > 1 else 0
            raise DivergedError(
                f"the student's outputs on {split} are not finite ({bad or 'some'} of "
                f"{len(preds)} examples) after step {self.distiller.step + 1}: its weights have "
                f"diverged{self._stop_advice()}"
            )
        labels = self.dataset[split].labels
        return {k: float(v) for k, v in self.dataset.metric(preds, labels).items()}

    def batches_for(self, split: str, batch_size: int, seed: int):
        """Shuffled batches of any split, for methods that need them (e.g. LGTM's quiz set)."""
        b = Batches(self.data[split], batch_size, seed)
        step = 0
        while True:
            yield _to(b.batch(step), self.device)
            step += 1

    # ------------------------------------------------------------------ checkpointed state
    def module_states(self) -> dict[str, dict]:
        return {k: m.state_dict() for k, m in self.distiller.trainable_modules().items()}

    def load_module_states(self, states: dict[str, dict]) -> None:
        mods = self.distiller.trainable_modules()
        for k, sd in states.items():
            mods[k].load_state_dict(sd)

    def checkpoint_state(self, state: TrainState) -> ckpt.Checkpoint:
        """Everything a resume needs, collected in one place: the trainable modules, every
        optimizer and LR schedule, the method's own state, the loop's progress and the RNGs."""
        return ckpt.Checkpoint(
            step=state.step,
            modules=self.module_states(),
            optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
            schedulers={k: s.state_dict() for k, s in self.schedulers.items()},
            method=self.distiller.extra_state(),
            progress=state.progress(),
            rng=ckpt.rng_state(),
            world_size=self.dist.world_size,
        )

    def restore(self, saved: ckpt.Checkpoint, state: TrainState) -> None:
        """The inverse of :meth:`checkpoint_state` (RNG states last, as they were saved).

        Under DDP every rank restores the same modules, optimizers and progress (rank 0 alone
        keeps the log window's sums, which hold every rank's share) and its own RNG state; ranks
        the checkpoint has no state for (it was written by fewer processes) draw afresh."""
        self.load_module_states(saved.modules)
        for k, sd in saved.optimizers.items():
            self.optimizers[k].load_state_dict(sd)
        for k, sd in saved.schedulers.items():
            self.schedulers[k].load_state_dict(sd)
        self.distiller.load_extra_state(saved.method)
        state.restore(saved.step, saved.progress)
        if not self.dist.is_main:
            state.running = {}
        self.log.truncate(saved.step)
        rank = self.dist.rank
        if rank == 0:
            ckpt.set_rng_state(saved.rng)
        elif rank <= len(saved.rank_rngs):
            ckpt.set_rng_state(saved.rank_rngs[rank - 1])
        else:
            ckpt.seed_everything(self.s.seed + rank + 7919 * saved.step)
        if saved.world_size != self.dist.world_size and self.dist.is_main:
            warnings.warn(
                f"resuming a run saved with {saved.world_size} process(es) on "
                f"{self.dist.world_size}: the global batches, data order, weights and optimizer "
                "state continue exactly; dropout draws of the ranks follow new streams",
                UserWarning,
                stacklevel=2,
            )
        self._adopt_later_best(state)

    def _adopt_later_best(self, state: TrainState) -> None:
        """A run killed after a new best but before its next checkpoint leaves a ``best.pt``
        from beyond ``last.pt``; it overwrote the best as of ``last.pt``. Its weights were
        trained and scored on dev all the same, so the resumed run competes against it rather
        than keeping a score whose weights no longer exist. A damaged ``best.pt`` is set aside
        (``best.pt.damaged``): the resumed run starts its best-on-dev selection afresh."""
        path = self.ckpt_dir / ckpt.BEST
        saved = distributed.on_main(lambda: _best_header(path), self.dist)  # rank 0 reads it
        if saved is None:
            return
        if saved == "damaged":
            state.best, state.best_step = -math.inf, None
            return
        if saved.step > state.step:
            if saved.score is not None:
                state.best, state.best_step = saved.score, saved.step
                return
            if self.dist.is_main:
                warnings.warn(  # written by an opdf that did not store the score
                    f"{path} holds step {saved.step}, after the resumed step {state.step}, "
                    "without its dev score; it will be replaced by the next dev improvement",
                    UserWarning,
                    stacklevel=2,
                )

    # ------------------------------------------------------------------ setup
    def build_optimizer(self, groups: list[dict], lr: float | None = None):
        """The run's optimizer over ``groups`` (AdamW, fused where the parameters allow, no decay
        on biases and norms) and its linear warmup/decay schedule: what
        :meth:`Distiller.configure_optimizers` receives as ``build`` (:mod:`opdf.run.optim`)."""
        return optim.build_optimizer(groups, self.s, self.distiller, self._schedule, lr=lr,
                                     resuming=self._resuming)  # fmt: skip

    def _schedule(self, step: int) -> float:
        return optim.warmup_decay(step, self.s.warmup_ratio, self.total_steps)

    def _configure_optimizers(self) -> None:
        built = self.distiller.configure_optimizers(self.build_optimizer)
        if "main" not in built:
            raise OpdfError(f"method {self.distiller.name}: configure_optimizers has no 'main'")
        self.optimizers = {k: opt for k, (opt, _) in built.items()}
        self.schedulers = {k: sched for k, (_, sched) in built.items() if sched is not None}
        self._clip_params = [p for g in self.optimizers["main"].param_groups for p in g["params"]]

    def _start(self, resume: bool) -> TrainState:
        """Optimizers, the resumed state (when asked and present), the method's start hook."""
        d, env = self.distiller, self.dist
        d.to(self.device)
        if self.s.on_nonfinite not in NONFINITE_CHOICES:
            raise OpdfError(f"on_nonfinite={self.s.on_nonfinite!r}; valid: stop, skip")
        # last.pt, or previous.pt when last.pt is damaged; under DDP rank 0 reads it and hands
        # it to the others
        found = None
        if resume:
            found = distributed.on_main(lambda: ckpt.read_latest(self.ckpt_dir), env)
        self._resuming = found is not None
        self._configure_optimizers()
        if env.enabled and set(self.optimizers) != {"main"}:
            others = ", ".join(sorted(set(self.optimizers) - {"main"}))
            raise OpdfError(
                f"method {d.name} steps optimizers of its own ({others}), whose gradients DDP "
                "does not all-reduce: run it in one process (without torchrun)"
            )
        state = self.state = TrainState()
        if env.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if found is not None:
            self.restore(found[1], state)
        elif env.rank > 0:
            ckpt.seed_everything(self.s.seed + env.rank)  # dropout masks of its own
        state.t0 = time.perf_counter()
        ctx = TrainContext(
            self.dataset, self.batches_for, self.total_steps, self.device, self.config,
            steps_per_epoch=self.batches.per_epoch, train_view=self.data["train"],
            eval_batch_size=self.s.eval_batch_size, cache_dir=cache_dir(), progress=self.progress,
            tokenizer=self.tokenizer, max_length=self.s.max_length,
            seed=self.s.seed, batch_size=self.s.batch_size, max_grad_norm=self.s.max_grad_norm,
        )  # fmt: skip
        d.on_train_start(ctx)
        d.train()
        teacher = ("distiller.teacher.",) if d.teacher is not None and d.teacher_frozen else ()
        self.step_module = distributed.wrap(
            TrainStep(d, self.align), env, self.device, ignore=teacher,
            find_unused_parameters=not d.every_parameter_used,
        )  # fmt: skip
        return state

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, stop_after_step: int | None = None) -> dict | None:
        """Train; returns the summary (None when stopped early by ``stop_after_step``)."""
        if "tensorboard" in self.s.log_to:
            require_tensorboard()  # before the method's start hook (which may train a teacher)
        state = self._start(resume)
        total = self.total_steps
        self.log.open_session(state.step)
        bar = progress_bar(total=total, initial=state.step, desc=self.desc, dynamic_ncols=True,
                           enabled=self.progress, leave=False)  # fmt: skip
        try:
            while state.step < total:
                terms, extra = self.train_step(state)
                bar.update(1)
                self._record(state, terms, extra, bar)
                done = state.step
                if done % self.eval_every == 0 or done == total:
                    self.evaluate_and_keep_best(state, bar)
                if self._checkpoint_due(done):
                    self.save_checkpoint(state)
                    if stop_after_step is not None and stop_after_step <= done < total:
                        return None
            return self.finish(state)
        finally:
            bar.close()
            self.log.close()

    def _checkpoint_due(self, done: int) -> bool:
        every = self.s.checkpoint_every
        return self.resumable and (bool(every and done % every == 0) or done == self.total_steps)

    def train_step(self, state: TrainState) -> tuple[dict[str, float], dict[str, float]]:
        """One optimizer step of the ``"main"`` optimizer, after the method's ``before_step``
        (a trainable teacher's step); returns the step's loss terms (with their sum as ``loss``,
        and ``L_Aux`` per module group as ``align/<group>``) and the scalars the method's
        ``before_step`` and ``on_step_end`` returned."""
        t = time.perf_counter()
        d, step = self.distiller, state.step
        d.step = step
        optimizer = self.optimizers["main"]
        optimizer.zero_grad(set_to_none=True)
        batch, size, weight = self.shard(step)
        with self.autocast():  # a trainable teacher's step (LGTM), before the student's
            before = d.before_step(_to(batch, self.device), step)
        terms, has_gradient, groups = self.forward_backward(batch, size, weight)
        state.no_grad_run = 0 if has_gradient else state.no_grad_run + 1
        if state.no_grad_run >= MAX_STEPS_WITHOUT_GRADIENT:
            raise OpdfError(
                f"method {d.name}: {state.no_grad_run} optimizer steps in a row (up to step "
                f"{step + 1}) without a gradient: its losses do not depend on any trainable "
                "parameter, so nothing is being trained"
            )
        grad_norm = self._clip_gradients()
        if self._nonfinite(state, terms, grad_norm):
            # nothing of this step reaches the weights (but a trainable teacher's step, taken
            # in before_step, which raises itself on a gradient that is not finite)
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
        else:
            state.skip_run = 0
            optimizer.step()
        if "main" in self.schedulers:
            self.schedulers["main"].step()
        extra = {**before, **d.on_step_end(step)}
        state.train_seconds += time.perf_counter() - t
        state.step += 1
        terms["loss"] = sum(terms.values())
        terms.update(groups)  # after the sum: shares of the align term, averaged like it
        return terms, extra

    def _clip_gradients(self) -> float:
        """Clip to ``max_grad_norm`` when set; the total gradient norm either way (one pass over
        the gradients, what clipping costs anyway)."""
        if self.s.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self._clip_params, self.s.max_grad_norm)
        else:
            grads = [p.grad for p in self._clip_params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        return float(norm)

    def _nonfinite(self, state: TrainState, terms: dict[str, float], grad_norm: float) -> bool:
        """Whether this step is to be skipped: a NaN/inf loss term or gradient stops the run
        (:class:`DivergedError`, nothing of the step applied) or, with ``on_nonfinite="skip"``,
        skips the step (counted in ``summary.json``)."""
        total = sum(terms.values())
        if math.isfinite(total) and math.isfinite(grad_norm):
            return False
        what = "loss" if not math.isfinite(total) else f"gradient norm ({grad_norm})"
        losses = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        step = state.step + 1
        if self.s.on_nonfinite == "skip":
            state.skipped += 1
            state.skip_run += 1
            if state.skip_run < MAX_SKIPPED_IN_A_ROW:
                warnings.warn(
                    f"step {step}: the {what} is not finite ({losses}); step skipped "
                    f"({state.skipped} so far)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return True
            raise DivergedError(
                f"step {step}: the {what} is not finite ({losses}), {state.skip_run} steps in a "
                f"row skipped (on_nonfinite=skip): the run has diverged{self._stop_advice()}"
            )
        raise DivergedError(
            f"step {step}: the {what} is not finite ({losses}); nothing of this step was "
            f"applied{self._stop_advice()}, or on_nonfinite=skip to skip such steps"
        )

    def _stop_advice(self) -> str:
        """Where the run stands and what to change, for a :class:`DivergedError`."""
        state = getattr(self, "state", None)
        saved = state.saved_step if state is not None else None
        where = (
            f"; {self.ckpt_dir / ckpt.LAST} (step {saved}) is intact"
            if saved
            else "; no checkpoint had been written"
        )
        return (
            f"{where}. Lower lr (now {self.s.lr:g}) or max_grad_norm (now {self.s.max_grad_norm})"
        )

    def shard(self, step: int) -> tuple[dict, int, float]:
        """This rank's part of step ``step``'s global batch, collated: ``(batch, global size,
        weight)``. A rank whose share of a short last batch is empty runs one example with
        weight 0, so that every rank takes part in the all-reduce."""
        indices = self.batches.indices(step)
        mine = distributed.shard(indices, self.dist)
        weight = 1.0
        if not mine:
            mine, weight = indices[:1], 0.0
        epoch = step // self.batches.per_epoch  # image views augment by (seed, epoch, image)
        return self.batches.view.batch(mine, epoch=epoch), len(indices), weight

    def forward_backward(
        self, batch: dict, global_size: int | None = None, weight: float = 1.0
    ) -> tuple[dict[str, float], bool, dict[str, float]]:
        """Losses and gradients of one (rank's share of a) batch, in micro-batches of
        ``batch_size / (grad_accum * world_size)``, with one MPO contraction for all of them.
        Returns this rank's share of the batch-weighted loss terms (the ranks' shares add up to
        the global batch's), whether the step has a gradient, or needs none by the method's
        own account, and the same share of ``L_Aux`` per module group (``align/<group>``,
        :attr:`opdf.AlignmentLoss.last_by_group`; empty without the alignment loss)."""
        d, n = self.distiller, len(batch["labels"])
        total = global_size or n
        world = self.dist.world_size
        micro = [
            {k: v[i : i + self.micro] for k, v in batch.items()} for i in range(0, n, self.micro)
        ]
        module = self.step_module
        no_sync = getattr(module, "no_sync", None)  # a DDP-wrapped module
        acc_block = accumulate(d.export_student()) if len(micro) > 1 else contextlib.nullcontext()
        terms: dict[str, float] = {}
        groups: dict[str, float] = {}
        stepped = expected = False
        with acc_block as acc:
            for j, mb in enumerate(micro):
                last = j == len(micro) - 1
                mb = _to(mb, self.device)
                share = len(mb["labels"]) / total * weight
                sync = no_sync() if no_sync is not None and not last else contextlib.nullcontext()
                with sync:
                    with self.autocast():
                        losses, carry = module(mb, acc if last else None)
                    if not losses:
                        raise OpdfError(f"method {d.name}: forward_train returned no loss")
                    loss = sum(losses.values())
                    # no trainable tensor in the graph: see MAX_STEPS_WITHOUT_GRADIENT
                    if loss.requires_grad:
                        stepped = True
                    else:
                        expected = expected or d.no_gradient_expected
                    # DDP averages over ranks: scale this rank's share up by the world size
                    objective = loss * (share * world)
                    if carry is not None:
                        objective = objective + carry
                    if objective.requires_grad:
                        objective.backward()
                for k, v in losses.items():
                    terms[k] = terms.get(k, 0.0) + float(v.detach()) * share
                if self.align is not None:
                    for g, v in self.align.last_by_group.items():
                        groups[f"align/{g}"] = groups.get(f"align/{g}", 0.0) + v * share
        return terms, stepped or expected, groups

    def _record(self, state: TrainState, terms: dict, extra: dict, bar) -> None:
        """Add a step's losses to the log window; write the window's mean every ``log_every``
        (a step skipped as not finite is left out of the mean and counted as ``skipped``)."""
        if math.isfinite(terms["loss"]):
            for k, v in terms.items():
                state.running[k] = state.running.get(k, 0.0) + v
            state.n_running += 1
        done = state.step
        if done % self.s.log_every and done != self.total_steps:
            return
        self._gather_running(state)
        rec = {k: v / state.n_running for k, v in state.running.items()} if state.n_running else {}
        if "loss" in rec:
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
        self.log.write({
            "step": done, "split": "train", "epoch": round(done / self.batches.per_epoch, 4),
            "lr": self.optimizers["main"].param_groups[0]["lr"],  # what get_last_lr() reads
            **rec, **extra, **({"skipped": state.skipped} if state.skipped else {}),
        })  # fmt: skip
        state.running, state.n_running = {}, 0

    def _gather_running(self, state: TrainState) -> None:
        """Sum the log window's loss terms over the ranks (each holds its share of every batch)
        into every rank's ``state.running``; a no-op on one process."""
        if not self.dist.enabled:
            return
        total: dict[str, float] = {}
        for part in distributed.all_gather_object(state.running, self.dist):
            for k, v in part.items():
                total[k] = total.get(k, 0.0) + v
        state.running = total

    def evaluate_and_keep_best(self, state: TrainState, bar=None) -> bool:
        """Score the student on dev; a new best is saved to ``best.pt``. Returns whether it was."""
        dev = self.evaluate("dev")
        score = dev[self.dataset.main_metric]
        improved = score > state.best
        if improved:
            state.best, state.best_step = score, state.step
            if self.dist.is_main:
                saved = ckpt.Checkpoint(state.step, self.module_states(), score=score, dev=dev)
                # listed before the write: a kill or a deferred Ctrl-C right after it leaves
                # nothing unlisted that --overwrite would then refuse
                self._own(f"checkpoints/{ckpt.BEST}", f"checkpoints/{ckpt.MANIFEST}")
                ckpt.save(saved, self.ckpt_dir / ckpt.BEST)
        self.log.write({"step": state.step, "split": "dev", **dev, "best": improved})
        if bar is not None:
            bar.set_postfix(dev=f"{score:.4f}", best=f"{state.best:.4f}")
        return improved

    def save_checkpoint(self, state: TrainState) -> None:
        """``last.pt``, atomically, the one before it kept as ``previous.pt``: what :meth:`fit`
        resumes from. Under DDP rank 0 writes it, with every rank's RNG state and the log
        window's sums over all ranks (kept by rank 0)."""
        env = self.dist
        rngs = distributed.all_gather_object(ckpt.rng_state(), env)
        if env.enabled:
            self._gather_running(state)
            if not env.is_main:
                state.running = {}
        if env.is_main:
            saved = self.checkpoint_state(state)
            saved.rank_rngs = rngs[1:]
            self._own(
                METRICS_FILE,  # listed before the write (see evaluate_and_keep_best)
                *(f"checkpoints/{n}" for n in (ckpt.LAST, ckpt.PREVIOUS, ckpt.MANIFEST)),
            )
            ckpt.save(saved, self.ckpt_dir / ckpt.LAST, keep_previous=True)
        distributed.barrier(env)  # the file is complete before any rank goes on (or is killed)
        state.saved_step = state.step

    # ------------------------------------------------------------------ the end
    def finish(self, state: TrainState) -> dict:
        """Merge the best student, evaluate it on dev and test, save it and ``summary.json``
        (the end stage: :mod:`opdf.run.finish`)."""
        student = self.distiller.export_student()
        best = read_best(self.ckpt_dir / ckpt.BEST, self.dist)
        if best is not None:
            self.load_module_states(best.modules)
        report = merge_checked(student)
        # a plain student (nothing merged) is the very model best.pt was scored with: its dev
        # metrics are known exactly; a merged one is scored again (a check of the merge)
        known = best.dev if best is not None and not report.modules else None
        dev, test = known or self.evaluate("dev"), self.evaluate("test")
        self.log.write({"step": state.step, "split": "test", **test})  # the merged best student's
        summary = run_summary(
            state, self.s, report, dev, test, run_info=self.run_info, dataset=self.dataset,
            world_size=self.dist.world_size, device=self.device, total_steps=self.total_steps,
            teacher_cache=getattr(self.distiller, "teacher_cache", None),  # this process's
        )  # fmt: skip
        if self.dist.is_main:
            write_results(self.out, student, summary, tokenizer=self.tokenizer,
                          dataset=self.dataset)  # fmt: skip
        distributed.barrier(self.dist)
        return summary


def _best_header(path: Path):
    """On rank 0 at a resume: ``best.pt`` without its weights (its step and score), None when
    there is none, or ``"damaged"`` when it is (set aside as ``best.pt.damaged``)."""
    if not path.exists():
        return None
    try:
        saved = ckpt.read(path)
    except ckpt.UnsafeCheckpointError:
        raise
    except ckpt.CheckpointError as exc:
        path.replace(path.with_name(ckpt.BEST + ".damaged"))
        warnings.warn(
            f"{exc}; set aside as {ckpt.BEST}.damaged, the best on dev is chosen again from "
            "the evaluations still to come",
            UserWarning,
            stacklevel=3,
        )
        return "damaged"
    saved.modules = {}
    return saved

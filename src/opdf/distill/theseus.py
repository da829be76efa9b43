"""BERT-of-Theseus: progressive module replacement (Xu et al., EMNLP 2020, arXiv 2002.02925).

The predecessor (the fine-tuned teacher, N layers) is cut into n modules of k = N / n consecutive
layers; successor module i is one layer, a copy of the fine-tuned predecessor's layer
``student.layers[i]`` (``student.init``: ``bottom``, the default, takes layers 0..n-1, the paper's
choice and the official code's; the summary records ``student_init``, ``student_layers``, and
``student_source: finetuned-teacher``, ``student_head: copy``, the only start Theseus takes: its
successor runs inside the predecessor, on the predecessor's embeddings and under its classifier).
For every training batch each module independently runs its successor layer with probability p,
else its k predecessor layers: ``y_{i+1} = r_i scc_i(y_i) + (1 - r_i) prd_i(y_i)``,
``r_i ~ Bernoulli(p)``. Only the successor layers train; predecessor layers,
embeddings, pooler and classifier are frozen (the student's copies of them stay equal to the
teacher's). The loss is the task loss only. Evaluation and export use the successor alone.
The draws come from a generator seeded by the run's seed and the step (one draw per micro-batch),
so every process of a data-parallel run replaces the same modules, and a resumed run repeats them.

Replacement schedulers (``replacement_scheduler.py`` of the official code), as functions of the
optimizer-step counter t:

* ``constant``: p = ``replacing_rate`` until ``steps_for_replacing`` steps, then 1.0 (the successor
  fine-tuning phase). The official CLI default ``steps_for_replacing 0`` silently skips replacement
  altogether (p = 1 from the first step); here it must be set (> 0).
* ``linear`` (curriculum): p_t = min(1, k t + b) with b = ``replacing_rate`` (p_0 = b before the
  first step) and k = ``linear_k``; once p reaches 1 the successor fine-tunes alone. k must be > 0.
  ``linear_k: null`` sizes k to the run: p reaches 1 after ``replace_until`` (default 0.5) of the
  training steps, so shortened runs (``max_steps``, subsampled data) still end with the
  successor fine-tuning phase. A fixed k that never reaches 1 leaves the successor evaluated alone
  without ever having been trained alone (it can sit at chance level).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from opdf.choices import check_fields, choice, in_range, positive, unit_interval
from opdf.distill.base import Distiller, model_inputs, task_loss
from opdf.distill.registry import register_method
from opdf.errors import ConfigError
from opdf.models import find_layer_list


class ConstantReplacementScheduler:
    """p = ``rate`` for the first ``steps_for_replacing`` steps, then 1.0."""

    def __init__(self, rate: float, steps_for_replacing: int):
        self.base = rate
        self.steps_for_replacing = steps_for_replacing

    def rate(self, step: int) -> float:
        return self.base if step < self.steps_for_replacing else 1.0

    def steps_to_successor(self) -> int:
        return 0 if self.base >= 1.0 else self.steps_for_replacing


class LinearReplacementScheduler:
    """p_t = min(1, k t + b): a curriculum whose last phase is the successor alone."""

    def __init__(self, base: float, k: float):
        self.base = base
        self.k = k

    def rate(self, step: int) -> float:
        return min(1.0, self.k * step + self.base)

    def steps_to_successor(self) -> int:
        return max(0, math.ceil((1.0 - self.base) / self.k))


class TheseusBlock(nn.Module):
    """Module i during training: its successor layer, or its k predecessor layers in sequence."""

    def __init__(self, successor: nn.Module, predecessors: list[nn.Module]):
        super().__init__()
        self.successor = successor
        self.predecessors = nn.ModuleList(predecessors)
        self.use_successor = True

    def forward(self, hidden_states, *args, **kwargs):
        if self.use_successor:
            return self.successor(hidden_states, *args, **kwargs)
        out = None
        for layer in self.predecessors:
            out = layer(hidden_states, *args, **kwargs)
            hidden_states = out[0] if isinstance(out, tuple) else out
        return out


@register_method("theseus")
class Theseus(Distiller):
    """BERT-of-Theseus: successor layers replace predecessor modules with probability p."""

    accepts_student_model = False
    student_sources = ("finetuned-teacher",)
    student_source_reason = ("the successor layers replace modules of the fine-tuned predecessor, "
                             "whose embeddings, pooler and classifier they share")  # fmt: skip

    @classmethod
    def check_student_start(cls, config) -> None:
        super().check_student_start(config)
        if config.student.head != "copy":
            raise ConfigError(
                "theseus: student.head: new is not allowed (the successor runs under the "
                "predecessor's frozen classifier); use student.head: copy (the default)"
            )

    every_parameter_used = False  # a successor layer is out of the graph when not drawn

    @dataclass
    class Options:
        scheduler: str = choice("constant", "linear", default="linear")
        replacing_rate: float = unit_interval(0.3)
        linear_k: float | None = positive(None, allow_none=True, why="so that p reaches 1")
        replace_until: float = in_range(0.5, 0, 1, low_open=True)
        steps_for_replacing: int | None = None

        def validate(self, cfg=None) -> None:
            check_fields(self, "theseus")
            if self.scheduler == "constant" and not self.steps_for_replacing:
                raise ConfigError(
                    "theseus.steps_for_replacing must be set (> 0) with the constant scheduler: "
                    "after that many steps p becomes 1 (successor fine-tuning); 0 would skip "
                    "replacement (the official code's default trap); the README uses 2500"
                )

        def make_scheduler(self, total_steps: int | None = None):
            if self.scheduler == "constant":
                return ConstantReplacementScheduler(self.replacing_rate, self.steps_for_replacing)
            k = self.linear_k
            if k is None:
                span = max(1, round(self.replace_until * (total_steps or 1)))
                k = (1.0 - self.replacing_rate) / span
            return LinearReplacementScheduler(self.replacing_rate, k)

    def __init__(self, student, teacher, options=None, *, num_labels=2):
        super().__init__(student, teacher, options, num_labels=num_labels)
        self.scheduler = self.options.make_scheduler()
        self._layers_name, successors = find_layer_list(student)
        _, predecessors = find_layer_list(teacher)
        n, big_n = len(successors), len(predecessors)
        if big_n % n:
            raise ConfigError(
                f"theseus needs the predecessor's layer count ({big_n}) to be a multiple of the "
                f"successor's ({n}); choose student.layers with a divisor of {big_n} entries"
            )
        self.compress_ratio = big_n // n
        self._successors = successors
        self._predecessors = predecessors
        k = self.compress_ratio
        # plain list: the blocks must not appear twice in state_dict / named_modules
        self._blocks = [
            TheseusBlock(successors[i], [predecessors[k * i + j] for j in range(k)])
            for i in range(n)
        ]
        # only the successor layers train: embeddings, pooler, classifier stay as in the teacher
        student.requires_grad_(False)
        successors.requires_grad_(True)
        self.last_rate = self.scheduler.rate(0)
        self._draw_seed = 0
        self._draw_step: int | None = None
        self._draws = torch.Generator()

    def on_train_start(self, context) -> None:
        """Size a ``linear_k: null`` schedule to the run's length; seed the draws."""
        self._draw_seed = int(getattr(getattr(context, "config", None), "seed", 0) or 0)
        self.scheduler = self.options.make_scheduler(context.total_steps)
        self.last_rate = self.scheduler.rate(self.step)
        reach = self.scheduler.steps_to_successor()
        if reach >= context.total_steps:
            warnings.warn(
                f"theseus: the replacing rate reaches 1 only at step {reach}, but the run has "
                f"{context.total_steps} steps: the successor layers never train alone, yet the "
                "exported student uses only them; lower steps_for_replacing / replace_until or "
                "train longer",
                UserWarning,
                stacklevel=2,
            )

    def rate(self, step: int | None = None) -> float:
        return self.scheduler.rate(self.step if step is None else step)

    def forward_train(self, batch):
        p = self.rate()
        self.last_rate = p
        if self._draw_step != self.step:  # draws depend on (seed, step) alone: every DDP rank
            self._draw_step = self.step  # draws the same, and a resumed run repeats them
            self._draws.manual_seed(self._draw_seed * 1_000_003 + self.step)
        full = torch.full((len(self._blocks),), p)
        draws = torch.bernoulli(full, generator=self._draws).bool().tolist()
        self.no_gradient_expected = not any(draws)  # only frozen predecessors in the graph
        for block, use in zip(self._blocks, draws, strict=True):
            block.use_successor = use
            block.predecessors.train(self.training)  # as in the original: one model, one mode
        self.student.set_submodule(self._layers_name, nn.ModuleList(self._blocks))
        try:
            logits = self.student(**model_inputs(batch)).logits
        finally:
            self.student.set_submodule(self._layers_name, self._successors)
            for block in self._blocks:
                block.predecessors.eval()
        return logits, {"ce": task_loss(logits, batch["labels"], self.num_labels)}

    def on_step_end(self, step: int) -> dict[str, float]:
        """The replacement rate from the next step on (what the log shows after ``step``)."""
        return {"replacing_rate": self.rate(step + 1)}

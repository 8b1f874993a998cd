"""Task fine-tuning helpers of the demo and the quality experiments (`mux_plms.training.task_finetune`)."""

from __future__ import annotations

import torch

from mux_plms.training.task_finetune import NEW_MODULES, SingleInstanceCurriculum, scaled_optimizer


def test_single_instance_curriculum_gives_each_group_one_real_instance_then_plain_batches():
    def collator(features):
        return {
            "input_ids": torch.tensor([f["input_ids"] for f in features]),
            "attention_mask": torch.ones(len(features), 3, dtype=torch.long),
            "labels": torch.tensor([f["label"] for f in features]),
        }

    features = [{"input_ids": [10 + i, 20 + i, 30 + i], "label": i % 2} for i in range(6)]
    curriculum = SingleInstanceCurriculum(collator, num_instances=3, single_steps=2, pad_token_id=0)
    batch = curriculum(features)
    assert batch["input_ids"].tolist() == [[10, 20, 30], [0, 0, 0], [0, 0, 0], [11, 21, 31], [0, 0, 0], [0, 0, 0]]
    assert batch["attention_mask"][:, 0].tolist() == [1, 0, 0, 1, 0, 0]
    assert batch["labels"].tolist() == [0, -100, -100, 1, -100, -100]
    curriculum.step = 2
    assert curriculum(features)["input_ids"].tolist() == collator(features)["input_ids"].tolist()


def test_scaled_optimizer_gives_the_new_modules_the_scaled_rate(tiny):
    from mux_plms import MuxBertForSequenceClassification

    model = MuxBertForSequenceClassification(tiny(num_instances=2, muxing_variant="gaussian_hadamard",
                                                  demuxing_variant="rsa", num_labels=2))  # fmt: skip
    optimizer = scaled_optimizer(model, 1e-4, 10.0)
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        new = any(part in name.split(".") for part in NEW_MODULES)
        assert rate[id(parameter)] == (1e-3 if new else 1e-4), name
        if name.endswith("bias") or "LayerNorm" in name:
            assert decay[id(parameter)] == 0.0, name
    assert rate[id(model.bert.demultiplexer.hidden_proj.weight)] == 1e-3
    assert rate[id(model.bert.encoder.layer[0].attention.self.query.weight)] == 1e-4

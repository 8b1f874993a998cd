"""Fine-tune a MUX checkpoint with a plain `Trainer` on the shipped polarity sentences.
Usage: python examples/train_with_trainer.py MODEL_DIR OUTPUT_DIR"""

import sys

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import mux_plms  # noqa: F401  (registers MUX-BERT with the Auto classes)
from mux_plms.data.corpora import polarity


def main(model_dir: str, output_dir: str, train_size: int | None = None, **training_kwargs) -> Trainer:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    data = polarity().map(lambda batch: tokenizer(batch["sentence"], truncation=True, max_length=64), batched=True)
    args = TrainingArguments(
        output_dir, **{"num_train_epochs": 1, "per_device_train_batch_size": 32, "report_to": "none", **training_kwargs}
    )
    train = data["train"].select(range(train_size or len(data["train"])))
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=data["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    trainer.train()
    print(trainer.evaluate())  # eval_loss; batch sizes need not be multiples of N (the model pads)
    return trainer


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

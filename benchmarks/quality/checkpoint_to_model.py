"""A complete model folder from a pre-training checkpoint: the stage's final folder (config, tokenizer, record)
with the checkpoint's weights (``accelerate.save_state``'s model.safetensors; the distill stage saves its
student under ``student.``). The record's last stage says which step the weights are from.

    python benchmarks/quality/checkpoint_to_model.py STAGE_DIR CHECKPOINT_DIR OUT_DIR
"""

import dataclasses
import sys
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

import mux_plms  # noqa: F401  (registers the MUX Auto classes)
from mux_plms.records import TrainingRecord


def main(final: Path, checkpoint: Path, out: Path) -> None:
    model = AutoModelForMaskedLM.from_pretrained(final)
    state = {k.removeprefix("student."): v for k, v in load_file(str(checkpoint / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not all("decoder.weight" in k for k in missing):  # decoders are tied to the embeddings
        raise SystemExit(f"{checkpoint} does not match {final}: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(final).save_pretrained(out)
    record = TrainingRecord.load(final)
    step = int(checkpoint.name.split("_")[-1])
    last = record.stages[-1]
    note = f"checkpoint at step {step} of a {last.steps}-step run (learning rate not yet decayed)"
    details = dict(last.details, note=note)
    if "train_seconds" in details:
        details["train_seconds"] = round(float(details["train_seconds"]) * step / last.steps, 1)
    record.stages[-1] = dataclasses.replace(last, steps=step, details=details)
    record.save(out)
    print(out, "from", checkpoint)


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))

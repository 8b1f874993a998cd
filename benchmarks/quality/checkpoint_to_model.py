"""A complete model folder from a pre-training checkpoint: the stage's final folder (config, tokenizer, record)
with the checkpoint's weights (``accelerate.save_state``'s model.safetensors)."""
import sys
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

import mux_plms  # noqa: F401

final, checkpoint, out = map(Path, sys.argv[1:4])
model = AutoModelForMaskedLM.from_pretrained(final)
state = {k.removeprefix("student."): v for k, v in load_file(str(checkpoint / "model.safetensors")).items()}
missing, unexpected = model.load_state_dict(state, strict=False)
assert not unexpected, unexpected
assert all("decoder.weight" in k for k in missing), missing  # tied to the word embeddings
model.save_pretrained(out)
AutoTokenizer.from_pretrained(final).save_pretrained(out)
import dataclasses

from mux_plms.records import TrainingRecord

record = TrainingRecord.load(final)
step = int(checkpoint.name.split("_")[-1])
last = record.stages[-1]
details = dict(last.details, note=f"checkpoint at step {step} of a {last.steps}-step run (learning rate not yet decayed)")
if "train_seconds" in details:
    details["train_seconds"] = round(float(details["train_seconds"]) * step / last.steps, 1)
record.stages[-1] = dataclasses.replace(last, steps=step, details=details)
record.save(out)

#!/usr/bin/env bash
# The slope of hidden-state distillation beyond 600 steps: one 2,400-step run, checkpoints every 600 steps,
# then 300 polarity fine-tuning steps from each (same protocol as distill600_bin_rsa_s300).
set -ex
P=.venv/bin/python
OUT=runs/quality/distill_N2_s2400
mkdir -p runs/quality/text
$P - <<'PY'
import random
from mux_plms.data import corpora
ptb = [l for l in corpora.penn_treebank("train") if l.strip()][:6000]
pol = corpora.polarity()["train"].shuffle(seed=42)["sentence"]
tw = [" ".join(t) for t in corpora.wnut16()["train"].shuffle(seed=42)["tokens"]]
lines = ptb + list(pol) + tw
random.Random(42).shuffle(lines)
open("runs/quality/text/train.txt", "w").write("\n".join(lines) + "\n")
valid = [l for l in corpora.penn_treebank("valid") if l.strip()][:400]
open("runs/quality/text/valid.txt", "w").write("\n".join(valid) + "\n")
PY
MINILM=$($P -c "from mux_plms.demo import minilm_dir; print(minilm_dir())")
OMP_NUM_THREADS=1 $P -m mux_plms.cli pretrain --stages distill --model_name_or_path $MINILM --num_instances 2 \
    --muxing_variant binary_hadamard --demuxing_variant rsa --train_file runs/quality/text/train.txt \
    --validation_file runs/quality/text/valid.txt --block_size 32 --per_device_train_mux_rows 16 \
    --per_device_eval_mux_rows 32 --learning_rate 3e-4 --warmup_steps 100 --max_steps 2400 --eval_steps 600 \
    --save_steps 600 --save_total_limit 0 --output_dir $OUT
for step in 600 1200 1800; do
  $P benchmarks/quality/checkpoint_to_model.py $OUT/stage1_distill $OUT/checkpoints/stage1_distill/step_$(printf %08d $step) $OUT/at_$step
  $P benchmarks/quality/levers.py --name distill2400run_at${step}_s300 -N 2 --init $OUT/at_$step --steps 300 --eval-every 100 --threads 1
done
$P benchmarks/quality/levers.py --name distill2400_bin_rsa_s300 -N 2 --init $OUT/stage1_distill --steps 300 --eval-every 100 --threads 1

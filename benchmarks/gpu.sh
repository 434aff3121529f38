#!/usr/bin/env bash
# Update-phase MFU on one CUDA GPU: a randomly initialised model of Qwen2.5-0.5B's shape, fp32 master weights
# under bf16 autocast, sdpa attention; the same rollouts timed back to back in each forward layout (padded,
# packed, shared-prefix, both), 16 prompts x 8: completions <= 256 after prompts ~60 and ~400 tokens, and
# completions <= 256 after prompts of 20-400 tokens (lengths that vary: what packing is for).
# Writes benchmarks/results/update_layouts_gpu.json. Sized to finish in well under 8 minutes on an H100/H200.
#
#   bash benchmarks/gpu.sh            # PYTHON=... to use another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh needs a CUDA GPU')"
[ -f runs/tiny-model/config.json ] || "$PY" -m reasoner tiny-model --out runs/tiny-model  # its tokenizer only
timeout 470 "$PY" benchmarks/train_step.py --layouts --gpu --steps 5 --shape issue long mixed

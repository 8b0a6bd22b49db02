#!/usr/bin/env bash
# The GPU check, one command:  bash bench/gpu_check.sh [--device cuda|cpu] [--out DIR] [--cores N]
#
# On a CUDA host it runs bench/gpu.yaml through Snakemake end to end (a random ~0.7B Llama with QLoRA 4-bit
# bf16 over 2 folds, a random BERT-base-width encoder with a bf16 full fine-tune, OOF, an ensemble, a
# submission) plus one fold of a tiny model of every family the recipes name (DeBERTa-v2, ModernBERT, Llama,
# Mistral, Qwen2, Qwen3, Gemma-2, Gemma-3; the decoders QLoRA 4-bit), checks from every training.json that each
# fold ran on cuda in bf16 with the expected attention kernel, and prints oofline's
# training tokens/s against a plain peft + bitsandbytes loop on the same model and batches, and peak GPU
# memory (bench/gpu_check.py does the work). `--device cpu` runs the same workflow on tiny models, to prove
# the script itself works (tests/test_gpu_check.py).
#
# Packages: torch, transformers, peft, accelerate, tokenizers, safetensors, numpy, pyyaml, jinja2 plus
# polars, snakemake, bitsandbytes, iterative-stratification, jsonschema (and their dependencies). A host
# that lacks the second group and cannot reach PyPI (the lent device machine) installs them from wheels in
# .whl/ of the repository root: build that folder where pip works with `bash bench/gpu_wheels.sh` (about
# 46 MiB: bitsandbytes slimmed to its CUDA 13.0 and CPU libraries, every wheel recompressed with LZMA),
# carry it, and this script installs it into /tmp/oofline-site before it starts. See bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=$(command -v python3 || command -v python || true)
if [ -z "$python_bin" ]; then
    echo "gpu_check: no python3 on PATH" >&2
    exit 2
fi
REQUIRED="torch transformers peft accelerate tokenizers safetensors numpy yaml jinja2 polars snakemake bitsandbytes iterstrat jsonschema"
missing_modules() {
    "$python_bin" - $REQUIRED <<'EOF'
import importlib.util, sys
print(" ".join(name for name in sys.argv[1:] if importlib.util.find_spec(name) is None))
EOF
}

missing=$(missing_modules)
if [ -n "$missing" ] && ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_check: installing $(ls .whl/*.whl | wc -l) carried wheels from .whl/ into /tmp/oofline-site (missing: $missing)"
    "$python_bin" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/oofline-site .whl/*.whl
    export PYTHONPATH="/tmp/oofline-site${PYTHONPATH:+:$PYTHONPATH}"
    missing=$(missing_modules)
fi
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python package(s): $missing (pip install -r requirements.txt, or build .whl/ with bench/gpu_wheels.sh and carry it; see bench/RESULTS.md)" >&2
    exit 2
fi

# Snakemake's jobs run `python -m workflow_scripts...`: `python` must be this interpreter.
if [ "$(command -v python || true)" = "" ] || [ "$(python -c 'import sys; print(sys.executable)' 2>/dev/null)" != "$("$python_bin" -c 'import sys; print(sys.executable)')" ]; then
    shim=$(mktemp -d /tmp/oofline-python.XXXXXX)
    # a wrapper, not a symlink: a venv's interpreter finds its pyvenv.cfg only under its own path
    printf '#!/bin/sh\nexec %s "$@"\n' "$python_bin" > "$shim/python"
    chmod +x "$shim/python"
    export PATH="$shim:$PATH"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec "$python_bin" bench/gpu_check.py "$@"

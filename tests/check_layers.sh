#!/bin/sh
# The layering, checked on every #include of the library's sources (run by `make lint` and `make test`):
#   common <- kernels <- formats <- model, data <- train, infer
# A file may include its own directory and the layers below its own; nothing includes upward, nor sideways between
# model and data or between train and infer; only kernels/ includes a backend's private headers (kernels/cpu,
# kernels/cuda). tests/ and bench/ sit on top and may include anything.
cd "$(dirname "$0")/.." || exit 1

rank() {
    case $1 in
    common) echo 0 ;;
    kernels | kernels/cpu | kernels/cuda) echo 1 ;;
    formats) echo 2 ;;
    model | data) echo 3 ;;
    train | infer) echo 4 ;;
    *) echo -1 ;;
    esac
}

bad=0 checked=0
for f in $(git ls-files 'common/*' 'kernels/*' 'formats/*' 'model/*' 'data/*' 'train/*' 'infer/*' |
    grep -E '\.(c|h|cu|cuh)$'); do
    dir=$(dirname "$f")
    from=$(rank "$dir")
    for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f"); do
        checked=$((checked + 1))
        target=$(realpath -m --relative-to=. "$dir/$inc")
        tdir=$(dirname "$target")
        to=$(rank "$tdir")
        why=""
        if [ ! -e "$target" ]; then
            why="no such file"
        elif [ "$to" -lt 0 ]; then
            why="$tdir is not a library layer"
        elif [ "$tdir" = "$dir" ]; then
            continue
        elif [ "$to" -gt "$from" ]; then
            why="includes upward ($dir is below $tdir)"
        elif [ "$to" -eq "$from" ] && [ "$from" -ne 1 ]; then
            why="includes sideways ($dir and $tdir are one layer)"
        elif [ "$from" -ne 1 ] && { [ "$tdir" = kernels/cpu ] || [ "$tdir" = kernels/cuda ]; }; then
            why="a backend's private header (ask kernels/ops.h)"
        fi
        if [ -n "$why" ]; then
            echo "  FAIL $f: #include \"$inc\": $why"
            bad=$((bad + 1))
        fi
    done
done
if [ "$bad" -eq 0 ]; then
    echo "  ok   $checked includes of the library keep the layering (common <- kernels <- formats <- model, data <- train, infer)"
    echo "1 passed, 0 failed"
else
    echo "0 passed, $bad failed"
    exit 1
fi

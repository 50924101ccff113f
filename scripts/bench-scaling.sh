#!/usr/bin/env bash
# Weak and strong scaling of the reference model at demo size on 1 and 2 ranks of one
# TensorFlow thread each, then the cost-model projection to 8, 64 and 512 ranks from
# those figures: writes bench-results/scaling.{csv,png,command} and projection-*.txt.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH=$root/.venv/bin:$PATH TF_CPP_MIN_LOG_LEVEL=3
data=data/demo.h5
results=bench-results
mkdir -p "$results"
if [[ ! -f $data ]]; then
    distributed-h5 make-synthetic "$data" --samples 1536 --frames 16 --size 32 32 --classes 4
fi

measure=(distributed-h5 bench scaling "$data" --ranks "1,2" --steps 60 --warmup 5
         --csv "$results/scaling.csv" --plot "$results/scaling.png")
echo "${measure[*]}" >"$results/scaling.command"
echo "+ ${measure[*]}"
"${measure[@]}"

project() {  # NAME [extra flags]: one projection block, headed by its command
    local name=$1
    shift
    local command=(distributed-h5 bench scaling "$data" --from-csv "$results/scaling.csv" --project "8,64,512" "$@")
    { echo "\$ ${command[*]}"; "${command[@]}" | sed -n '/^assumptions/,$p'; } >"$results/projection-$name.txt"
    cat "$results/projection-$name.txt"
}
project 1-measured
project 2-gpu-like --compute-ms 50
project 3-resnet101-like --compute-ms 200 --gradient-mb 178

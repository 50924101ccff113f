#!/usr/bin/env bash
# Step time of R(2+1)D-18 (31.5 M parameters) on 16x3x112x112 clips, float32 and
# mixed_bfloat16, on 1 and 2 ranks of one TensorFlow thread each, through the real training
# path (bench scaling): writes bench-results/models-<precision>.{csv,command}.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH=$root/.venv/bin:$PATH
data=data/bench/r2plus1d.h5
results=bench-results
mkdir -p "$results" "$(dirname "$data")"
if [[ ! -f $data ]]; then
    distributed-h5 make-synthetic "$data" --samples 64 --frames 16 --size 112 112 --classes 400
fi
for precision in float32 mixed_bfloat16; do
    measure=(distributed-h5 bench scaling "$data" --model r2plus1d_18 --precision "$precision" --ranks "1,2"
             --batch-size 2 --steps 5 --warmup 2 --csv "$results/models-$precision.csv")
    echo "${measure[*]}" >"$results/models-$precision.command"
    echo "+ ${measure[*]}"
    "${measure[@]}"
done

#!/usr/bin/env bash
# Accelerator utilisation (MLPerf Storage's AU) of every loader at 1, 2, 4, 6 and 8 emulated
# accelerators, warm and cold page cache: writes bench-results/au-{warm,cold}.csv, au.png
# and au.command. The file: DH5_AU_CLIPS clips (default 8000, about 4.8 GB) of 16x3x112x112
# uint8, one clip per chunk. No GPU here: 30 ms per step stands for a real accelerator's.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH=$root/.venv/bin:$PATH TF_CPP_MIN_LOG_LEVEL=3
clips=${DH5_AU_CLIPS:-8000}
data=data/bench/au-$clips.h5
results=bench-results
mkdir -p "$results" data/bench
if [[ ! -f $data ]]; then
    need=$((clips * 16 * 3 * 112 * 112 / 1000000 + 100))  # MB, with room for the metadata
    free=$(df -Pm data/bench | awk 'NR == 2 {print $4}')
    if ((free < need + 1000)); then
        echo "bench-au: $data needs ${need} MB and data/bench has ${free} MB free; set DH5_AU_CLIPS lower" >&2
        exit 2
    fi
    distributed-h5 make-synthetic "$data" --samples "$clips" --frames 16 --channels 3 --size 112 112 --chunks clip
fi
# PyTorch for the torch-dataloader peer: the bench-torch extra, never a runtime dependency.
# PyPI's Linux torch is the CUDA build; it runs on CPU but brings about 5 GB of CUDA libraries.
loaders=distributed_h5,torch-dataloader,tfdata,seed
if ! python -c "import torch" 2>/dev/null && ! python -m pip install -q "$(python -c '
import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench-torch"][0])')"; then
    echo "bench-au: PyTorch could not be installed; the torch-dataloader loader is left out" >&2
    loaders=distributed_h5,tfdata,seed
fi

common=(--ranks "1,2,4,6,8" --compute-ms 30 --batch-size 16 --seconds "${DH5_AU_SECONDS:-5}" --loaders "$loaders")
for cache in warm cold; do
    flag=()
    [[ $cache == cold ]] && flag=(--cold)
    command=(distributed-h5 bench au "$data" "${common[@]}" "${flag[@]}" --csv "$results/au-$cache.csv")
    echo "${command[*]}" >"$results/au-$cache.command"
    echo "+ ${command[*]}"
    "${command[@]}" | tee "$results/au-$cache.txt"
done
distributed-h5 bench au --from-csv "$results/au-warm.csv" "$results/au-cold.csv" --plot "$results/au.png" \
    | tee "$results/au.txt"
# Beyond 8 emulated accelerators, warm: the peers that held 8, distributed_h5 as trained
# (--prefetch 1, the default) and unbuffered (--feeder-prefetch 0: each step pays the hand-off).
beyond=(distributed-h5 bench au "$data" --ranks "8,10,12" --compute-ms 30 --batch-size 16
        --seconds "${DH5_AU_SECONDS:-5}")
command=("${beyond[@]}" --loaders "${loaders%,seed}" --csv "$results/au-beyond-default.csv")
echo "${command[*]}" >"$results/au-beyond.command"
echo "+ ${command[*]}"
"${command[@]}"
command=("${beyond[@]}" --loaders distributed_h5 --feeder-prefetch 0 --csv "$results/au-beyond-unbuffered.csv")
echo "${command[*]}" >>"$results/au-beyond.command"
echo "+ ${command[*]}"
"${command[@]}"

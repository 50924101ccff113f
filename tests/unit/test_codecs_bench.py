"""The codec benchmark's pure parts: the arithmetic a user applies, and clips that vary."""

import h5py
import numpy as np

from distributed_h5.bench.codecs import accelerators_fed, clip, file_psnr


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


def test_file_psnr_covers_every_clip(tmp_path):
    # Clips differ only where k % 4 != 0: a sample every 16th clip (what the benchmark took before,
    # one video of four) saw none of it. One differing byte in 8 x 2 x 3 x 4 x 4 gives MSE 100 / 768.
    clips = np.random.default_rng(0).integers(0, 245, (8, 2, 3, 4, 4), dtype=np.uint8)
    changed = clips.copy()
    changed[[1, 2, 5], 0, 0, 0, 0] += 10
    for name, x in (("a.h5", clips), ("b.h5", changed)):
        with h5py.File(tmp_path / name, "w") as file:
            file["X"] = x
            file["Y"] = np.eye(2, dtype=np.uint8)[np.arange(8) % 2]
            file.attrs["sample_count"] = 8
    assert file_psnr(tmp_path / "a.h5", tmp_path / "a.h5") == float("inf")
    expected = 10 * np.log10(255.0**2 / (3 * 100 / clips.size))
    assert file_psnr(tmp_path / "a.h5", tmp_path / "b.h5", block=3) == expected
    assert file_psnr(tmp_path / "a.h5", tmp_path / "b.h5", block=16) == expected

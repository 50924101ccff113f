"""docs/BENCHMARKS.md's real-frame codec section, from a small bench-results/ folder written here."""

import json

from distributed_h5.bench import report


def _au(file, loader, cache, ranks, au, samples_per_second):
    return dict(file=file, loader=loader, cache=cache, ranks=ranks, batch_size=16, compute_ms=30.0, gradient_mb=0.0,
                steps=10, au=au, au_min=au, samples_per_second=samples_per_second, mb_per_second=1.0,
                data_wait_ms=0.0, allreduce_ms=0.0, settings=f"{loader} as set up")


def _results(tmp_path):
    codecs = {
        "raw": dict(bytes_per_clip=602112.0, ratio=1.0, psnr=float("inf"), clips_per_second={"1": 6000.0, "2": 5800.0},
                    accelerators_fed=1.5),
        "jpeg": dict(bytes_per_clip=80000.0, ratio=7.5264, psnr=36.784, clips_per_second={"1": 300.0, "2": 590.0},
                     accelerators_fed=1.125),
    }
    au = [_au("real-raw-4.h5", "distributed_h5", "warm", 1, 0.95, 500.0),
          _au("real-raw-4.h5", "distributed_h5", "warm", 2, 0.91, 990.0),
          _au("real-raw-4.h5", "tfdata", "warm", 1, 0.92, 490.0),
          _au("real-jpeg-4.h5", "distributed_h5", "warm", 1, 0.93, 495.0),
          _au("real-jpeg-4.h5", "distributed_h5", "cold", 1, 0.9, 480.0),
          _au("real-jpeg-4.h5", "distributed_h5", "cold", 2, 0.5, 600.0),
          _au("real-jpeg-4.h5", "distributed_h5", "cold", 4, 0.25, 560.0)]
    (tmp_path / "codecs.json").write_text(json.dumps(dict(
        command="python -m distributed_h5.bench.codecs --clips 4", clips=4, clip_bytes_raw=602112, cores=2,
        compute_ms=30.0, batch_size=16, codecs=codecs, au=au, storage_bytes_per_second=0.48e9,
        evictions=["real-raw-4.h5: raw sequential read of 256 MB: 3.00 GB/s warm, 0.48 GB/s right after eviction"])))
    return tmp_path


def test_the_codec_section_has_sizes_quality_decode_rates_au_and_the_arithmetic(tmp_path):
    lines = report.codecs_section(_results(tmp_path)).splitlines()
    assert lines[0] == "## Real frames: the clip codecs (`make bench-codecs`)"
    assert lines[lines.index("```") + 1] == "python -m distributed_h5.bench.codecs --clips 4"
    start = lines.index("| codec | bytes per clip | vs raw | PSNR | decode clips/s, 1 thread | decode clips/s, 2 threads |")
    assert lines[start + 2 : start + 4] == ["| raw | 602,112 | 1/1.00 | exact | 6,000 | 5,800 |",
                                            "| jpeg | 80,000 | 1/7.53 | 36.78 dB | 300 | 590 |"]
    start = lines.index("| codec | loader | page cache | AU at 1 | AU at 2 | AU at 4 | most ranks at AU ≥ 0.90 |")
    assert lines[start + 2 : start + 7] == ["| raw | distributed_h5 | warm | 0.950 | 0.910 |  | 2 |",
                                            "| raw | tfdata | warm | 0.920 |  |  | 1 |",
                                            "| jpeg | distributed_h5 | warm | 0.930 |  |  | 1 |",
                                            "| jpeg | distributed_h5 | cold | 0.900 | 0.500 | 0.250 | 1 |",
                                            ""]
    assert "- real-raw-4.h5: raw sequential read of 256 MB: 3.00 GB/s warm, 0.48 GB/s right after eviction" in lines
    assert "- `tfdata`: tfdata as set up" in lines
    # jpeg: 2 cores x 300 clips/s = 600 < 0.48e9 / 80,000 = 6,000: core-bound, 1.125 accelerators
    # of 16 clips per 30 ms (533.3 clips/s). Cold: 560 clips/s at 4 ranks, the most measured, is
    # 1.05 accelerators' worth, 0.93 of 1.125; the best, 600 at 2 ranks, 1.125, 1.00.
    assert lines[-1] == ("- with 2 cores, 0.48 GB/s of storage and a step of 30 ms per 16 clips, codec jpeg feeds 1.1 "
                         "accelerators (core-bound); measured cold: AU ≥ 0.90 up to 1 of [1, 2, 4] emulated "
                         "accelerators; at 4 ranks 1.05 accelerators' worth of clips, 0.93 of the arithmetic's figure "
                         "(the best, at 2: 1.12, 1.00).")
    assert lines[-2] == ("- with 2 cores, 0.48 GB/s of storage and a step of 30 ms per 16 clips, codec raw feeds 1.5 "
                         "accelerators (storage-bound); not measured cold.")


def test_the_arithmetic_takes_each_codec_s_storage_rate_from_the_loaders_many_readers(tmp_path):
    results = _results(tmp_path)
    report_json = json.loads((results / "codecs.json").read_text())
    del report_json["storage_bytes_per_second"]
    report_json.update(storage_readers=8, sequential_bytes_per_second=0.26e9)
    report_json["codecs"]["raw"].update(storage_bytes_per_second=1.2e9, accelerators_fed=3.7368)
    report_json["codecs"]["jpeg"].update(storage_bytes_per_second=0.04e9, accelerators_fed=0.9375)
    (results / "codecs.json").write_text(json.dumps(report_json))
    lines = report.codecs_section(results).splitlines()
    assert ("D the storage's bytes/s (here what 8 readers drew from each codec's file right after eviction, each "
            "announcing and reading batches of 16 clip-size blocks at random, as that many ranks' readers do; one "
            "sequential stream gave 0.26 GB/s)"
            in next(line for line in lines if line.startswith("The arithmetic")))
    # jpeg: 0.04e9 / 80,000 = 500 clips/s < 2 x 300: storage-bound now; raw: 1.2e9 / 602,112 = 1,993 < 12,000.
    assert lines[-2].startswith("- with 2 cores, 1.20 GB/s of storage and a step of 30 ms per 16 clips, codec raw "
                                "feeds 3.7 accelerators (storage-bound); not measured cold.")
    assert lines[-1].startswith("- with 2 cores, 0.04 GB/s of storage and a step of 30 ms per 16 clips, codec jpeg "
                                "feeds 0.9 accelerators (storage-bound); measured cold:")


def test_the_script_s_command_file_wins_over_the_json_s_record(tmp_path):
    results = _results(tmp_path)
    (results / "codecs.command").write_text("python -m distributed_h5.bench.codecs --clips 4 --ranks 1,2\n")
    lines = report.codecs_section(results).splitlines()
    assert lines[lines.index("```") + 1] == "python -m distributed_h5.bench.codecs --clips 4 --ranks 1,2"


def test_without_results_the_section_says_how_to_produce_them(tmp_path):
    assert report.codecs_section(tmp_path) == (
        "## Real frames: the clip codecs (`make bench-codecs`)\n\n" + report.CODECS_MISSING + "\n")
    assert "run `make bench-codecs`" in report.CODECS_MISSING


def test_only_codecs_rewrites_that_section_and_leaves_the_rest(tmp_path):
    (tmp_path / "results").mkdir()
    results = _results(tmp_path / "results")
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nio figures\n\n" + report.CODECS_HEADING + "\n\nold figures\n\n## Projection\n\nkept\n")
    report.main([str(results), str(doc), "--only", "codecs"])
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nio figures\n\n" + report.CODECS_HEADING + "\n\n4 clips of")
    assert "old figures" not in text and text.endswith("(the best, at 2: 1.12, 1.00).\n\n## Projection\n\nkept\n")
    assert report.with_section("# B\n", "## S\n\nnew\n") == "# B\n\n## S\n\nnew\n"  # no such section: appended

"""scripts/device-bench.sh --cpu: the GPU machine's benchmark, run here on the CPU so it cannot rot.

One run of the script (about a minute) feeds every test of the report's structure; the pure
helpers are tested without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from distributed_h5 import __version__
from distributed_h5.bench import au, device

ROOT = Path(__file__).resolve().parents[2]
CPU = device.SETTINGS["cpu"]
HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(report, markdown, stdout) of one `scripts/device-bench.sh --cpu` run."""
    root = tmp_path_factory.mktemp("device-bench")
    out = root / "out"
    # No wheels: this machine's own packages (the carried wheels are for the GPU machine's Python).
    env = dict(os.environ, OUT=str(out), DH5_WHEELS=str(root / "no-wheels"))
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device-bench.sh"), "--cpu", "--data", str(root / "data")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device-bench.json").read_text())
    return report, (out / "device-bench.md").read_text(), done.stdout


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_report_names_the_machine_and_versions(bench):
    report, _, _ = bench
    assert report["schema"] == device.SCHEMA and report["mode"] == "cpu"
    env = report["environment"]
    assert set(env) >= {"device", "driver", "python", "cpus", "distributed_h5", "commit", "jax", "jaxlib", "keras",
                        "torch", "torchvision", "h5py", "numpy", "data_dir", "data_filesystem", "jax_backend",
                        "jax_devices"}
    assert env["distributed_h5"] == __version__
    assert env["jax_backend"] == "cpu" and env["jax_devices"] and env["keras"].startswith("3.")
    assert env["device"].startswith("CPU") or env["driver"]  # nvidia-smi names a GPU with its driver
    assert is_number(report["elapsed_seconds"]) and report["elapsed_seconds"] < CPU.deadline + 60
    files = report["files"]
    assert {name: (f["clips"], f["clip_shape"]) for name, f in files.items()} == {
        "train": (CPU.train_clips, [CPU.frames, 3, CPU.size, CPU.size]),
        "bench": (CPU.bench_clips, [CPU.frames, 3, CPU.size, CPU.size])}
    assert all(f["bytes"] > f["clips"] * CPU.frames * 3 * CPU.size * CPU.size for f in files.values())
    assert not any(os.path.exists(f["path"]) for f in files.values())  # removed without --keep-data


def test_every_part_has_figures_or_a_recorded_reason(bench):
    report, _, stdout = bench
    assert list(report["parts"]) == ["train_model", "torch", "au"]
    for name, part in report["parts"].items():
        assert part["status"] in ("ok", "error", "skipped"), name
        assert (part["error"] is None) == (part["status"] == "ok"), (name, part)
        assert part["error"] is None or (isinstance(part["error"], str) and "\n" not in part["error"])
        assert is_number(part["seconds"])
        assert f"device-bench: {name}: {part['status']}" in stdout


def test_train_model_runs_the_real_path_warm_and_cold(bench):
    report, _, _ = bench
    part = report["parts"]["train_model"]
    assert part["status"] == "ok", part["error"]
    assert [(r["model"], r["precision"], r["batch_size"]) for r in part["runs"]] == [
        (name, precision, batch) for name, _, precision, batch in CPU.train_runs]
    for run in part["runs"]:
        assert run["error"] is None, run["error"]  # on this CPU every run fits its budget
        assert run["steps_per_epoch"] == CPU.train_clips // run["batch_size"]  # validation_ratio=0: all of the file
        assert len(run["warmup_seconds"]) == 2 and all(s > 0 for s in run["warmup_seconds"])
        for cache in ("warm", "cold"):
            figures = run[cache]
            assert set(figures) == {"step_ms", "clips_per_second", "data_wait_fraction"}
            assert figures["step_ms"] > 0 and figures["clips_per_second"] > 0
            assert 0 <= figures["data_wait_fraction"] < 1
        assert is_number(run["loss"])


def test_torch_part_is_skipped_with_its_reason_without_pytorch(bench):
    report, _, _ = bench
    part = report["parts"]["torch"]
    if not HAS_TORCH:
        assert part == {"status": "skipped", "error": "PyTorch or torchvision is not installed here",
                        "seconds": part["seconds"]}
        return
    assert part["status"] == "ok", part["error"]
    for run in part["runs"]:
        assert run["error"] is not None or (run["step_ms"] > 0 and 0 <= run["data_wait_fraction"] < 1)


def test_au_runs_at_the_measured_step(bench):
    report, _, _ = bench
    part = report["parts"]["au"]
    assert part["status"] == "ok", part["error"]
    train = report["parts"]["train_model"]["runs"][0]
    assert part["settings"]["compute_ms"] == pytest.approx(train["warm"]["step_ms"])
    assert part["settings"]["compute_source"].startswith("train_model's warm step")
    # torch-dataloader needs torch alone (au.missing decides, as bench device does); the torch part also torchvision.
    loaders = ["distributed_h5"] + ([] if au.missing(["torch-dataloader"]) else ["torch-dataloader"])
    measured = [(r["loader"], r["cache"], r["ranks"]) for r in part["rows"]]
    failed = [(e["loader"], e["cache"], e["ranks"]) for e in part["errors"]]
    assert sorted(measured + failed) == sorted((loader, cache, ranks) for cache in ("warm", "cold")
                                               for loader in loaders for ranks in CPU.au_ranks)
    assert all(isinstance(e["error"], str) and e["error"] for e in part["errors"])
    assert all(("distributed_h5", cache, ranks) in measured for cache in ("warm", "cold") for ranks in CPU.au_ranks)
    for row in part["rows"]:
        assert 0 < row["au_min"] <= row["au"] <= 1 and row["samples_per_second"] > 0 and row["steps"] >= 2
        assert row["compute_ms"] == part["settings"]["compute_ms"] and row["batch_size"] == CPU.au_batch_size


def test_markdown_table_names_the_device_and_every_part(bench):
    report, markdown, _ = bench
    env = report["environment"]
    assert markdown == device.markdown(report)
    for text in (env["device"], f"| Keras | {env['keras']} |", f"| distributed_h5 | {__version__}",
                 "## distributed_h5 `train_model`, JAX engine", "## torchvision `r2plus1d_18`", "## AU:"):
        assert text in markdown
    assert f"| {CPU.train_runs[0][0]} | {CPU.train_runs[0][2]} | {CPU.train_runs[0][3]} | " in markdown


# --- the pure helpers --------------------------------------------------------------------------
def test_au_compute_ms_prefers_r2plus1d_bfloat16_at_the_batch():
    def run(model, precision, batch, step_ms):
        return {"model": model, "precision": precision, "batch_size": batch, "warm": {"step_ms": step_ms}}

    train = {"runs": [run("video_classifier", "mixed_bfloat16", 16, 5.0), run("r2plus1d_18", "float32", 16, 90.0),
                      run("r2plus1d_18", "mixed_bfloat16", 32, 60.0), run("r2plus1d_18", "mixed_bfloat16", 16, 40.0),
                      {"model": "r2plus1d_18", "precision": "mixed_bfloat16", "batch_size": 16, "warm": None}]}
    assert device.au_compute_ms(train, 16) == (40.0, "train_model's warm step, r2plus1d_18 mixed_bfloat16 batch 16")
    assert device.au_compute_ms({"runs": train["runs"][:1]}, 16)[0] == 5.0
    assert device.au_compute_ms({"status": "error", "error": "x"}, 16) == (
        30.0, "bench au's default: no train_model step was measured")


def test_markdown_of_failed_parts_gives_their_one_line_errors():
    report = {"mode": "gpu", "started": "t", "elapsed_seconds": 1.0, "files": None,
              "environment": {"device": "NVIDIA H200 (143771 MiB)", "driver": "580.1", "jax": "0.11.2",
                              "jax_backend": None, "jax_devices": None, "keras": "3.15.1", "torch": "2.11.0",
                              "torchvision": "0.26.0", "distributed_h5": __version__, "commit": None,
                              "python": "3.12.3", "cpus": 16, "data_dir": "/d", "data_filesystem": "ext4"},
              "parts": {"train_model": {"status": "error", "error": "ValueError: a | b"},
                        "torch": {"status": "skipped", "error": "PyTorch or torchvision is not installed here"},
                        "au": {"status": "error", "error": "no benchmark file: OSError: disk full"}}}
    text = device.markdown(report)
    assert "| device | NVIDIA H200 (143771 MiB) |" in text and "| driver | 580.1 |" in text
    assert "error: ValueError: a \\| b" in text
    assert "skipped: PyTorch or torchvision is not installed here" in text
    assert "error: no benchmark file: OSError: disk full" in text


def test_one_line_folds_the_message():
    assert device.one_line(ValueError("bad\n  value\tthere")) == "ValueError: bad value there"


@pytest.mark.parametrize("mode", device.MODES)
def test_every_mode_fits_its_files_and_budget(mode):
    settings = device.SETTINGS[mode]
    # The warm and cold train_model epochs have steps; every torch run reads fresh batches of one epoch;
    # each AU rank has at least 2 steps in its shard at the most ranks.
    assert all(settings.train_clips // batch >= 3 for _, _, _, batch in settings.train_runs)
    assert settings.bench_clips // max(settings.batch_sizes) >= settings.torch_warmup + settings.torch_steps
    assert settings.bench_clips // (settings.au_batch_size * max(settings.au_ranks)) >= 2
    assert sum(settings.budgets.values()) <= settings.deadline
    assert len(set((name, precision, batch) for name, _, precision, batch in settings.train_runs)) == \
        len(settings.train_runs)

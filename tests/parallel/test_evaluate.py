"""evaluate and predict under horovodrun -np 2 --gloo give one process's result: each rank its share, sums combined."""

import csv
import subprocess

import pytest

from distributed_h5.synthetic import make_synthetic

from .conftest import VENV_BIN, horovodrun_env, launch

CLI = str(VENV_BIN / "distributed-h5")


def fields(line: str) -> dict:
    return dict(part.split("=", 1) for part in line.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """61 clips of 6 classes (so top-5 is reported), trained one epoch on 2-frame windows and 8 x 8 crops."""
    root = tmp_path_factory.mktemp("evaluate")
    path = make_synthetic(root / "six.h5", samples=61, frames=4, channels=3, size=(12, 12), classes=6, seed=3,
                          progress=False)
    one_process("train", path, "--epochs", 1, "--batch-size", 4, "--width", 4, "--depth", 2, "--clip-frames", 2,
                "--crop", 8, 8, "--checkpoint-dir", root / "run", "--verbose", 0, "--tf-threads", 1)
    return root, path, root / "run" / "epoch-0001.keras"


def one_process(*args):
    result = subprocess.run([CLI, *map(str, args)], env=horovodrun_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_evaluate_on_two_ranks_equals_one_process(trained):
    root, path, checkpoint = trained
    args = ("evaluate", path, "--checkpoint", checkpoint, "--views", 2, 3, "--tf-threads", 1)
    alone = fields(one_process(*args).strip())
    lines = [line for line in launch(2, "gloo", CLI, *args).stdout.splitlines() if "val_accuracy=" in line]
    assert len(lines) == 1  # rank 0 prints
    together = fields(lines[0].split("]<stdout>:")[-1].strip())
    assert together["ranks"] == "2" and alone["ranks"] == "1"
    assert together["samples"] == alone["samples"] == "19"  # 61 - int(0.7 * 61)
    # Correct-prediction counts are summed, so the accuracies are equal to the last bit; the loss
    # is a float32 sum taken in another order (per-rank totals), so equal to float32 rounding.
    for key in ("val_accuracy", "val_top5_accuracy"):
        assert together[key] == alone[key]
    assert float(together["val_loss"]) == pytest.approx(float(alone["val_loss"]), rel=1e-6)


def test_predict_on_two_ranks_writes_one_process_csv(trained):
    root, path, checkpoint = trained
    args = ("predict", path, "--checkpoint", checkpoint, "--views", 2, 2, "--tf-threads", 1)
    one_process(*args, "--out", root / "alone.csv")
    launch(2, "gloo", CLI, *args, "--out", root / "together.csv")
    alone, together = ((root / name).read_text() for name in ("alone.csv", "together.csv"))
    assert together == alone
    rows = list(csv.DictReader(alone.splitlines()))
    assert len(rows) == 61 and list(rows[0]) == ["index", "predicted", "probability", "true", "subset"]  # no source_paths
    assert (root / "together-confusion.png").exists()

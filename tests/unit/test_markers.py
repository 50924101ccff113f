"""The tier markers declared in pyproject.toml are applied by folder, so `-m` selects tiers."""

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def collected(*args):
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *args, str(TESTS / "parallel"), str(TESTS / "slurm"), str(TESTS / "unit" / "test_sharding.py")],
                            capture_output=True, text=True, cwd=TESTS.parent, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.split("/")[1] for line in result.stdout.splitlines() if line.startswith("tests/")}


def test_markers_select_tiers():
    assert collected() == {"parallel", "slurm", "unit"}
    assert collected("-m", "not slurm") == {"parallel", "unit"}
    assert collected("-m", "parallel") == {"parallel"}
    assert collected("-m", "slurm") == {"slurm"}
    assert collected("-m", "not parallel and not slurm") == {"unit"}

"""Shared fixtures: small synthetic files in every layout the package supports."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from distributed_h5.synthetic import make_synthetic  # noqa: E402

LAYOUTS = {
    "contiguous": dict(chunks="none", compression="none"),
    "clip-chunks": dict(chunks="clip", compression="none"),
    "gzip": dict(chunks="clip", compression="gzip"),
    "lzf": dict(chunks="clip", compression="lzf"),
    "zstd": dict(chunks="clip", compression="zstd"),
}


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """One small file per layout: 203 rows, sample_count 197, 8x3x16x16 uint8 clips, 5 classes.

    Open them with ``locking=False`` as the package does: HDF5 refuses to open a file twice
    in one process with different locking flags.
    """
    root = tmp_path_factory.mktemp("layouts")
    return {
        name: make_synthetic(root / f"{name}.h5", samples=203, sample_count=197, frames=8, channels=3,
                             size=(16, 16), classes=5, seed=7, progress=False, **kwargs)
        for name, kwargs in LAYOUTS.items()
    }


TIER_MARKERS = {"parallel": "parallel", "slurm": "slurm"}  # tests/<folder>/ -> marker declared in pyproject.toml


@pytest.fixture
def disk_events(monkeypatch):
    """Every ``os.posix_fadvise`` and ``os.preadv`` call from here on, in order, as
    ``(kind, offset, bytes, advice)``: "advise" (advice given) or "read" (advice None). The calls still run."""
    events = []
    fadvise, preadv = os.posix_fadvise, os.preadv
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, size, advice: events.append(
        ("advise", offset, size, advice)) or fadvise(fd, offset, size, advice))
    monkeypatch.setattr(os, "preadv", lambda fd, views, offset: events.append(
        ("read", offset, sum(map(len, views)), None)) or preadv(fd, views, offset))
    return events


def pytest_collection_modifyitems(config, items):
    # Mark each test by the tier folder it lives in, so `-m 'not slurm'` or `-m parallel` select tiers.
    tests_root = os.path.dirname(__file__)
    for item in items:
        folder = os.path.relpath(str(item.path), tests_root).split(os.sep)[0]
        if folder in TIER_MARKERS:
            item.add_marker(getattr(pytest.mark, TIER_MARKERS[folder]))

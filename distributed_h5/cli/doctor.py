"""``doctor``: what is installed and working, one line each. Parser and handler."""

from __future__ import annotations

import argparse

from ..doctor import CHECKS  # imports nothing heavy at module level
from . import _command


def add_commands(commands) -> None:
    doctor = _command(commands, "doctor", "what is installed and working, one line each", _doctor)
    doctor.add_argument("--require", default="", type=_checks,
                        help=f"comma-separated checks that must pass, else exit status 1: {','.join(CHECKS)}")
    doctor.add_argument("--dir", default=".", help="where to check that HDF5 file locking works (default: here)")


def _checks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"takes names from {','.join(CHECKS)}, got {','.join(unknown)}")
    return names


def _doctor(args) -> int:
    from ..doctor import findings, report

    text, status = report(findings(args.dir), args.require)
    print(text, flush=True)
    return status

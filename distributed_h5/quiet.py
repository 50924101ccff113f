"""Keep TensorFlow's start-up noise off every rank's stderr. Imports TensorFlow (in :func:`import_tensorflow`).

TensorFlow prints, once per process, lines that say nothing about the user's job: absl's
"All log messages before absl::InitializeLog() ...", the oneDNN banner (twice),
cpu_feature_guard's list of instructions, "Memory patch applied", and an error-level
"oneDNN supports DT_UINT8 only on platforms with AVX-512" that is not an error. Under
``horovodrun -np 8`` that is forty lines before the first useful one.

``TF_CPP_MIN_LOG_LEVEL`` alone does not hide them: the absl warning and the oneDNN banner
are written while TensorFlow's libraries load, before absl reads the level (measured with
TensorFlow 2.21). So :func:`import_tensorflow` sets the level to 3 (errors from TensorFlow
still reach the user as Python exceptions) and imports TensorFlow with file descriptor 2
pointed at a temporary file, then restores it and passes on every captured line that is
not known noise. ``TF_ENABLE_ONEDNN_OPTS=0`` would also hide the banner, but it turns off
oneDNN's kernels, so it is not used.

``DH5_TF_LOG=1`` turns all of this off, and a ``TF_CPP_MIN_LOG_LEVEL`` the user set is kept.
"""

from __future__ import annotations

import os
import sys
import tempfile

NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
    "rebuild TensorFlow with the appropriate compiler flags",
    "Memory patch applied",
    "oneDNN supports DT_UINT8 only on platforms with AVX-512",
)


def wanted() -> bool:
    """Whether TensorFlow's start-up logs were asked for (``DH5_TF_LOG=1``)."""
    return os.environ.get("DH5_TF_LOG", "0") not in ("", "0")


def is_noise(line: str) -> bool:
    return any(marker in line for marker in NOISE)


def import_tensorflow() -> None:
    """Import TensorFlow without its start-up noise on stderr (unless ``DH5_TF_LOG=1``).

    Call it before anything else imports TensorFlow; afterwards it does nothing.
    """
    if wanted() or sys.modules.get("tensorflow") is not None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()

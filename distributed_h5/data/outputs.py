"""Checks on an output file's path before any work is done, text that can always be written,
the one atomic write (:func:`atomic_write`) and the one way to plot (:func:`pyplot`,
:func:`save_figure`).
Imports nothing beyond the standard library (matplotlib when a plot is drawn).

Writers here (``make-synthetic``, ``convert``) write ``OUT.partial`` next to ``OUT`` and
rename it when complete, so what they need is a directory they can create files in, and an
``OUT`` that is not a directory. Finding out after an hour of conversion is too late.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path


def check_output(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if a file can be written there; else raise ValueError saying why.

    Creates (and removes) an empty probe file in the directory: permission bits do not tell
    the whole story (root, read-only mounts, immutable directories, ACLs).
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"output {path} is a directory, expected a file path such as {path / 'data.h5'}")
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: the rename at the end would replace it
        raise ValueError(f"output {path} exists and is not a regular file; expected a file path (it is written "
                         "under a temporary name and renamed over OUT)")
    if not folder.exists():
        raise ValueError(f"output {path}: directory {folder} does not exist; create it first")
    if not folder.is_dir():
        raise ValueError(f"output {path}: {folder} is not a directory")
    probe = folder / f".{path.name}.probe-{socket.gethostname()}-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise ValueError(f"output {path}: cannot create files in {folder} ({exc.strerror})") from exc
    probe.unlink()
    return path


def printable(value) -> str:
    """``value`` (str or bytes) as text that can always be printed or written as UTF-8.

    A name that is not UTF-8 (bytes from a file system or an HDF5 string, which Python decodes
    to surrogates) shows its bad bytes as ``\\xNN`` escapes instead of failing a write later.

    Example:
        >>> printable(b"caf\\xe9"), printable("caf\\udce9"), printable("chat")
        ('caf\\\\xe9', 'caf\\\\xe9', 'chat')
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
    return value


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, partial: str | os.PathLike | None = None,
                 durable: bool = True) -> Iterator[Path]:
    """Write ``path`` whole or not at all: yields a temporary path beside it to write to; on a
    clean exit fsyncs that file and renames it over ``path``; on any exception removes it and
    re-raises, leaving ``path`` as it was.

    The temporary name is ``partial``, by default ``.partial-<pid>-<name>`` in the same
    directory (a rename is atomic only within one file system), so a kill mid-write leaves no
    file that looks complete. ``durable=False`` skips the fsync: for a file rewritten often
    that need not outlive a crash (a progress counter), whole is enough.

    Example:
        >>> with atomic_write("counts.txt") as partial:  # doctest: +SKIP
        ...     partial.write_text("42\\n")
    """
    path = Path(path)
    partial = Path(partial) if partial is not None else path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        yield partial
        if durable:
            with open(partial, "rb") as written:  # durable before it replaces the previous file
                os.fsync(written.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # gone after the rename; after any failure, not left behind


def pyplot(output: str | os.PathLike):
    """``matplotlib.pyplot`` on the Agg backend (no display needed), to draw ``output``; a
    RuntimeError in one line if matplotlib is missing. It is a dependency of the ``bench``
    extra, which ``make install`` installs; every plot the package writes asks here."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError(f"{output}: writing it needs matplotlib, which is not installed: pip install "
                           "'distributed_h5[bench]' (make install installs it)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_rows(path: str | os.PathLike, fields: list[str], rows) -> None:
    """Dataclass ``rows`` as a CSV file with ``fields`` for header, floats to 6 significant
    digits, written through :func:`atomic_write`."""
    import csv
    from dataclasses import asdict

    with atomic_write(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})


def save_figure(figure, path: str | os.PathLike, **savefig) -> None:
    """Lay ``figure`` out tight, write it to ``path`` through :func:`atomic_write` (``savefig``'s
    keywords passed on; the format from ``path``'s suffix unless ``format=`` says) and close it,
    written or not: a figure left open holds its memory until the process ends."""
    plt = pyplot(path)
    try:
        figure.tight_layout()
        with atomic_write(path) as partial:
            figure.savefig(partial, **savefig)
    finally:
        plt.close(figure)

"""``distributed-h5 doctor``: what is installed and working, one line each. Imports TensorFlow, Horovod, JAX if present.

Each check returns a :class:`Finding`: a name, whether the thing works, and one line of
detail. ``--require`` names the checks that must pass; the command exits non-zero if one
does not, so a job script can stop early on a machine that lacks, say, Horovod or SLURM.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from . import __version__


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str


def _run(*argv: str, timeout: float = 10) -> tuple[int, str]:
    """Exit status and first output line of a command (127 if it cannot run)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return done.returncode, lines[0] if lines else ""


def check_tensorflow() -> Finding:
    try:
        import tensorflow as tf
    except ImportError as exc:
        return Finding("tensorflow", False, f"missing ({exc}); run `make install`")
    return Finding("tensorflow", True, f"{tf.__version__} (built with CUDA: {'yes' if tf.test.is_built_with_cuda() else 'no'})")


def check_keras() -> Finding:
    try:
        import keras
    except ImportError as exc:
        return Finding("keras", False, f"missing ({exc})")
    return Finding("keras", keras.__version__.startswith("3."), f"{keras.__version__}, backend {keras.backend.backend()}")


def check_horovod() -> list[Finding]:
    try:
        import horovod
        import horovod.tensorflow as hvd
    except Exception as exc:  # ImportError, or the TensorFlow ops failing to load (an ABI mismatch)
        detail = f"missing or broken ({type(exc).__name__}: {' '.join(str(exc).split())}); run `make install`"
        return [Finding("horovod", False, detail), Finding("gloo", False, "no Horovod"),
                Finding("nccl", False, "no Horovod")]
    controllers = [name for name, built in (("gloo", hvd.gloo_built()), ("mpi", hvd.mpi_built())) if built]
    nccl = bool(hvd.nccl_built())
    detail = (f"{horovod.__version__} with TensorFlow; controllers: {', '.join(controllers) or 'none'}; "
              f"NCCL: {'yes' if nccl else 'no'}")
    return [Finding("horovod", bool(controllers), detail),
            Finding("gloo", hvd.gloo_built(), "Horovod's Gloo controller " + ("built" if hvd.gloo_built() else "not built")),
            Finding("nccl", nccl, "Horovod's NCCL operations " + ("built" if nccl else "not built (CPU or MPI allreduce)"))]


def check_mpi() -> Finding:
    launcher = shutil.which("mpirun")
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # asking for the library version needs no MPI_Init
        mpi4py.rc.finalize = False
        from mpi4py import MPI

        library = MPI.Get_library_version().strip().splitlines()[0].split(",")[0]
        detail = f"mpi4py {mpi4py.__version__}, {library}"
        ok = True
    except ImportError as exc:
        detail, ok = f"mpi4py missing ({exc})", False
    detail += f"; mpirun: {launcher or 'not on PATH'}"
    return Finding("mpi", ok and launcher is not None, detail)


def check_gpus() -> Finding:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    status, line = _run("nvidia-smi", "-L") if shutil.which("nvidia-smi") else (127, "")
    smi = f"nvidia-smi: {line}" if status == 0 else "no nvidia-smi"
    return Finding("gpu", bool(gpus), f"{len(gpus)} seen by TensorFlow ({smi})")


def check_jax() -> Finding:
    if importlib.util.find_spec("jax") is None:
        return Finding("jax", False, "not installed (optional)")
    try:
        import jax

        devices = jax.devices()
    except Exception as exc:  # a broken jaxlib raises many types
        return Finding("jax", False, f"installed but broken: {type(exc).__name__}: {exc}")
    return Finding("jax", True, f"{jax.__version__}, devices: {jax_devices(devices)}")


def jax_devices(devices) -> str:
    """``2 gpu (NVIDIA H200), 1 cpu``: JAX's devices by platform, with the accelerators' kind."""
    counts: dict[str, list] = {}
    for device in devices:
        counts.setdefault(device.platform, []).append(device)
    parts = []
    for platform, found in sorted(counts.items()):
        kinds = sorted({getattr(d, "device_kind", "") for d in found} - {""}) if platform != "cpu" else []
        parts.append(f"{len(found)} {platform}" + (f" ({', '.join(kinds)})" if kinds else ""))
    return ", ".join(parts)


def check_locking(folder: str) -> Finding:
    """Whether HDF5 file locking works in ``folder`` (it fails on many parallel file systems)."""
    import h5py

    setting = os.environ.get("HDF5_USE_FILE_LOCKING", "unset")
    versions = f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}; HDF5_USE_FILE_LOCKING={setting}"
    try:
        handle, probe = tempfile.mkstemp(suffix=".h5", prefix=".dh5-doctor-", dir=folder)
    except OSError as exc:
        return Finding("locking", False, f"not checked: cannot write in {folder} ({exc.strerror}); {versions}")
    os.close(handle)
    try:
        with h5py.File(probe, "w", locking=True):
            pass
        return Finding("locking", True, f"works in {folder}; {versions} (the package opens files with locking off)")
    except OSError as exc:
        return Finding("locking", False, f"fails in {folder} ({' '.join(str(exc).split())}); the package opens files "
                                         f"with locking off, so set HDF5_USE_FILE_LOCKING=FALSE for other tools; {versions}")
    finally:
        os.unlink(probe)


def check_slurm() -> Finding:
    commands = {name: shutil.which(name) for name in ("sbatch", "srun", "sinfo")}
    missing = [name for name, where in commands.items() if where is None]
    if missing:
        return Finding("slurm", False, f"not installed ({', '.join(missing)} not on PATH)")
    status, line = _run("sinfo", "-h", "-o", "%P %a %D")
    job = os.environ.get("SLURM_JOB_ID")
    where = f"in job {job} ({os.environ.get('SLURM_NTASKS', '?')} tasks)" if job else "not in a job"
    if status != 0:
        return Finding("slurm", False, f"installed, but no controller answers (sinfo: {line}); {where}")
    return Finding("slurm", True, f"controller answers (first partition: {line}); {where}")


CHECKS = ("tensorflow", "keras", "horovod", "gloo", "nccl", "mpi", "gpu", "jax", "locking", "slurm")


def findings(folder: str = ".") -> list[Finding]:
    """Every check, in :data:`CHECKS` order."""
    found = [check_tensorflow()]
    if found[0].ok:
        found.append(check_keras())
        found += check_horovod()
    else:
        found += [Finding(name, False, "needs TensorFlow") for name in ("keras", "horovod", "gloo", "nccl")]
    found.append(check_mpi())
    found.append(check_gpus() if found[0].ok else Finding("gpu", False, "needs TensorFlow"))
    found += [check_jax(), check_locking(folder), check_slurm()]
    return found


def report(found: list[Finding], required: list[str]) -> tuple[str, int]:
    """The lines to print and the exit status: 1 if a required check failed, else 0."""
    width = max(len(finding.name) for finding in found)
    lines = [f"distributed_h5 {__version__} (Python {sys.version.split()[0]}, {sys.executable})"]
    lines += [f"{finding.name:<{width}}  {'ok  ' if finding.ok else 'no  '}{finding.detail}" for finding in found]
    failed = [finding.name for finding in found if finding.name in required and not finding.ok]
    if failed:
        lines.append(f"missing what was required: {', '.join(failed)}")
    return "\n".join(lines), 1 if failed else 0

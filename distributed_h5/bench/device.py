"""``python -m distributed_h5.bench.device``: one bounded measurement for a lent GPU machine. No framework import.

``scripts/device-bench.sh`` runs it (issue 23): on a GPU machine about 7 minutes, with
``--mode cpu`` the same code on a tiny file and models in a minute or two (what
``tests/unit/test_device_bench.py`` runs, so the script cannot rot between GPU draws). It
writes two synthetic files on local disk, then measures three parts:

``train_model``
    distributed_h5's real training path, ``train_model(engine="jax")``, for each model
    (``r2plus1d_18``, ``video_classifier``), precision (``mixed_bfloat16``, ``float32``) and
    batch size: four epochs of a small file, two to warm up (Keras on JAX compiles the step three
    times: its first step, its second, and the first of the second epoch), the third with the
    page cache warm, the fourth cold (the file's pages evicted as the epoch begins; the feeder's
    and Keras' read-ahead, at most 4 batches, were read before). Step ms, clips/s and
    ``data_wait_fraction`` per epoch, the last two from the History's logs. The runs go batch 16
    first, so a run cut short by its budget keeps every model and precision at one batch size.
``torch``
    what users pick instead: torchvision's ``r2plus1d_18`` fed by ``torch.utils.data.DataLoader``
    over ``bench au``'s h5py-per-clip Dataset, under bf16 autocast, for each batch size and
    ``num_workers``: step ms, clips/s and the time each step waited for its batch. Recorded as
    skipped, with the reason, where PyTorch is not importable.
``au``
    ``bench au``'s emulated accelerators (MLPerf Storage's AU) at the step time just measured
    (``r2plus1d_18``, ``mixed_bfloat16``, batch 16): the package's reader (the Feeder, iterated as
    ``train_model`` feeds Keras on JAX) and the torch ``DataLoader``, at 1 to 8 accelerators.

The driver imports no framework: each part runs in processes of its own, so that a crash or a
hang in one, or JAX taking most of the GPU's memory, cannot touch the next. Every part and
every item in it is bounded by steps and by a share of one deadline; a failure is recorded
with its one-line error and the rest still runs. Every figure goes to ``OUT/device-bench.json``
and a markdown table ``OUT/device-bench.md`` naming the device, driver and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from . import au

MODES = ("gpu", "cpu")
SCHEMA = 1
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout run from


@dataclass(frozen=True)
class Settings:
    """What one mode measures, and its bounds."""

    frames: int
    size: int
    classes: int
    train_clips: int  # the train_model file: one epoch is all of it
    bench_clips: int  # the torch and AU file
    train_runs: tuple[tuple[str, dict, str, int], ...]  # (model, its keyword arguments, precision, batch), in order
    batch_sizes: tuple[int, ...]  # the torch runs'
    torch_workers: tuple[int, ...]
    torch_warmup: int
    torch_steps: int
    au_batch_size: int
    au_ranks: tuple[int, ...]
    au_seconds: float
    au_torch_workers: int  # DataLoader workers per emulated accelerator
    budgets: dict  # seconds for each part; the whole run also stops at `deadline`
    deadline: float


def _grid(models, precisions, batch_sizes) -> tuple:
    """Every (model, kwargs, precision, batch), in the order a cut-short run should keep them: every
    model and precision at the first batch size, then the other batch sizes a precision at a time."""
    first, *others = batch_sizes
    return tuple([(name, kwargs, precision, first) for precision in precisions for name, kwargs in models]
                 + [(name, kwargs, precision, batch) for precision in precisions for batch in others
                    for name, kwargs in models])


SETTINGS = {
    # About 7 minutes on one H200 with 16 cores: 16x3x112x112 uint8 clips (602 KB).
    "gpu": Settings(
        frames=16, size=112, classes=400, train_clips=768, bench_clips=2048,
        train_runs=_grid((("r2plus1d_18", {}), ("video_classifier", {"dropout": 0.0})),
                         ("mixed_bfloat16", "float32"), (16, 32, 8)),
        batch_sizes=(16, 32, 8), torch_workers=(4, 8), torch_warmup=5, torch_steps=20,
        au_batch_size=16, au_ranks=(1, 2, 4, 8), au_seconds=2.0, au_torch_workers=2,
        budgets={"train_model": 270.0, "torch": 60.0, "au": 75.0}, deadline=450.0),
    # The same code on this CPU, tiny: XLA's CPU compiles R(2+1)D-18's step, even at width 4, in
    # about a minute (three times a run), so the CPU runs the small model alone, 3 steps an epoch.
    "cpu": Settings(
        frames=8, size=32, classes=4, train_clips=6, bench_clips=32,
        train_runs=(("video_classifier", {"width": 4, "depth": 1, "dropout": 0.0}, "mixed_bfloat16", 2),),
        batch_sizes=(2,), torch_workers=(1,), torch_warmup=1, torch_steps=2,
        au_batch_size=2, au_ranks=(1, 2), au_seconds=0.3, au_torch_workers=1,
        budgets={"train_model": 150.0, "torch": 40.0, "au": 50.0}, deadline=240.0),
}


class Skipped(RuntimeError):
    """A part that cannot run here (PyTorch missing, say): recorded as skipped, with the reason."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message, whitespace folded."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command(*argv: str) -> str | None:
    """The command's first output line, or None if it cannot run or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def _filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (tmpfs would make 'cold' meaningless)."""
    path, best, kind = os.path.realpath(path), "", "unknown"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and path.startswith(fields[1]) and len(fields[1]) > len(best):
                    best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


def environment(data_dir: str) -> dict:
    """The device, driver and versions, without importing a framework."""
    from .. import __version__

    gpu = _command("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    if gpu:
        name, driver, memory = (part.strip() for part in (gpu.split(",") + ["", ""])[:3])
        device = f"{name} ({memory})" if memory else name
    else:
        driver, device = None, "CPU"
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
            device = f"CPU ({model})" if model else device
        except OSError:
            pass
    commit = _command("git", "-C", ROOT, "rev-parse", "--short", "HEAD")
    return {
        "device": device, "driver": driver, "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)), "distributed_h5": __version__, "commit": commit,
        "package_path": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "jax": _version("jax"), "jaxlib": _version("jaxlib"), "keras": _version("keras"),
        "torch": _version("torch"), "torchvision": _version("torchvision"), "h5py": _version("h5py"),
        "numpy": _version("numpy"), "data_dir": data_dir, "data_filesystem": _filesystem(data_dir),
        "jax_backend": None, "jax_devices": None,  # filled in by the train_model worker
    }


# --- the workers: one process per part, each item bounded --------------------------------------
def _write(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _items_worker(kind: str, spec: dict, items: list[int], results: str) -> None:
    """Run ``items`` of ``spec[kind]`` in this process, one JSON line each, until the deadline."""
    run = {"train_model": _train_item, "torch": _torch_item}[kind]
    took: dict[str, float] = {}  # the shortest run of each model so far: a longer wait is not started
    for index in items:
        item, left = spec["items"][index], spec["deadline"] - time.time()
        model = item.get("model", "")
        if left < took.get(model, 1.0):
            known = f", a {model} run takes {took[model]:.0f} s" if model in took else ""
            _write(results, {"item": index, "error": f"skipped: the part's time budget was spent ({left:.0f} s "
                                                     f"left{known})"})
            continue
        started = time.perf_counter()
        try:
            record = run(spec, item)
        except Exception as exc:  # any failure of one item is recorded; the next one still runs
            record = {"error": one_line(exc)}
        took[model] = min(took.get(model, float("inf")), time.perf_counter() - started)
        _write(results, {"item": index, **record})


def _train_item(spec: dict, item: dict) -> dict:
    """One (model, precision, batch) through ``train_model(engine="jax")``: warm-up, warm and cold epochs."""
    import jax
    import keras

    from .. import models
    from ..training import train_model
    from .io import warm

    # Keras on JAX compiles the train step three times in train_model (its first step, its second, and
    # the first of the second epoch: the state's placement changes), so two epochs warm up.
    file, epochs = spec["file"], 4

    class EpochClock(keras.callbacks.Callback):
        """Wall time of each epoch; the page cache emptied as the last one begins."""

        def __init__(self):
            super().__init__()
            self.seconds, self.steps = [], []

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == epochs - 1:
                au.evict(file)
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)
            self.steps.append(self.params["steps"])

    keras.config.set_dtype_policy(item["precision"])
    try:
        build = getattr(models, item["model"])
        model = build(tuple(spec["clip_shape"]), spec["classes"], seed=0, **item["kwargs"])
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy")
        clock = EpochClock()
        warm(file)
        history = train_model(model, file, validation_ratio=0.0, batch_size=item["batch_size"], epochs=epochs,
                              scale_learning_rate=False, warmup_epochs=0, monitor=None, verbose=0,
                              callbacks=[clock], engine="jax", precision=item["precision"])
    finally:
        keras.config.set_dtype_policy("float32")
    logs = history.history

    def epoch(index: int) -> dict:
        return {"step_ms": 1e3 * clock.seconds[index] / clock.steps[index],
                "clips_per_second": float(logs["samples_per_second"][index]),
                "data_wait_fraction": float(logs["data_wait_fraction"][index])}

    record = {"jax": {"jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()]},
              "steps_per_epoch": clock.steps[2], "warmup_seconds": clock.seconds[:2], "warm": epoch(2),
              "cold": epoch(3), "loss": float(logs["loss"][-1]), "error": None}
    del model, history
    keras.backend.clear_session()
    gc.collect()
    return record


_torch_state: dict = {}


def _torch_item(spec: dict, item: dict) -> dict:
    """torchvision's r2plus1d_18 on a ``DataLoader`` under bf16 autocast: the step, and its wait for data."""
    import torch
    import torchvision
    from torch.utils.data import DataLoader

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not _torch_state:  # one model for every item of this process
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = True  # what users of fixed-size clips set
        model = torchvision.models.video.r2plus1d_18(num_classes=spec["classes"]).to(device)
        _torch_state.update(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                            loss=torch.nn.CrossEntropyLoss())
    model, optimizer, loss_fn = _torch_state["model"], _torch_state["optimizer"], _torch_state["loss"]
    workers, batch_size = item["num_workers"], item["batch_size"]
    loader = DataLoader(au.ClipDataset(spec["file"]), batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device == "cuda", drop_last=True, prefetch_factor=2 if workers else None)
    batches = iter(loader)
    warmup, steps = spec["torch_warmup"], spec["torch_steps"]
    waited, start = 0.0, None
    for step in range(warmup + steps):
        if step == warmup:
            waited, start = 0.0, time.perf_counter()
        asked = time.perf_counter()
        clips, labels = next(batches)
        waited += time.perf_counter() - asked
        # Stored (batch, frames, channels, H, W) uint8; torchvision takes (batch, channels, frames, H, W).
        clips = clips.to(device, non_blocking=True).permute(0, 2, 1, 3, 4).float().div_(255)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = loss_fn(model(clips), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()  # users log the loss; this also ends the step on the GPU
    elapsed = time.perf_counter() - start
    del batches, loader
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "steps": steps,
            "step_ms": 1e3 * elapsed / steps, "clips_per_second": steps * batch_size / elapsed,
            "data_wait_ms": 1e3 * waited / steps, "data_wait_fraction": waited / elapsed, "loss": loss_value,
            "error": None}


def _run_items(kind: str, spec: dict, count: int, deadline: float, env: dict) -> list[dict]:
    """Run ``count`` items in worker processes until ``deadline``: a worker that dies costs its
    current item (recorded with its last output line) and a new worker takes the rest."""
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix=f"dh5-device-{kind}-") as scratch:
        spec_path, out = os.path.join(scratch, "spec.json"), os.path.join(scratch, "results.jsonl")
        with open(spec_path, "w") as handle:
            json.dump({**spec, "deadline": deadline}, handle)
        while len(results) < count:
            pending = [i for i in range(count) if i not in results]
            left = deadline - time.time()
            if left <= 1:
                break
            command = [sys.executable, "-m", "distributed_h5.bench.device", "--worker", kind, "--spec", spec_path,
                       "--items", ",".join(map(str, pending)), "--results", out]
            with open(os.path.join(scratch, "log"), "w+") as log:
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                try:
                    code = process.wait(timeout=left + 5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
                log.seek(0)
                lines = [line.strip() for line in log.read().splitlines() if line.strip()]
            if os.path.exists(out):
                with open(out) as handle:
                    for line in handle:
                        record = json.loads(line)
                        results[record.pop("item")] = record
            stuck = next((i for i in pending if i not in results), None)
            if stuck is not None:
                why = "killed at the part's time budget" if code < 0 and time.time() >= deadline else \
                    f"the worker exited {code}: {lines[-1][:300] if lines else 'no output'}"
                results[stuck] = {"error": why}
    for index in range(count):
        results.setdefault(index, {"error": "skipped: the part's time budget was spent"})
    return [results[i] for i in range(count)]


def _worker_env(**extra: str) -> dict:
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


# --- the parts --------------------------------------------------------------------------------
def part_train_model(settings: Settings, mode: str, file: str, deadline: float, report: dict) -> dict:
    items = [{"model": name, "kwargs": kwargs, "precision": precision, "batch_size": batch}
             for name, kwargs, precision, batch in settings.train_runs]
    spec = {"file": file, "classes": settings.classes, "items": items,
            "clip_shape": [settings.frames, 3, settings.size, settings.size]}
    # JAX on the CPU alone in cpu mode; on the GPU machine JAX finds the GPU.
    env = _worker_env(KERAS_BACKEND="jax", **({"JAX_PLATFORMS": "cpu"} if mode == "cpu" else {}))
    records = _run_items("train_model", spec, len(items), deadline, env)
    for record in records:  # JAX's backend and devices, as the train_model worker saw them
        report["environment"].update(record.pop("jax", None) or {})
    runs = [{"model": item["model"], "precision": item["precision"], "batch_size": item["batch_size"],
             **_train_fields(record)} for item, record in zip(items, records)]
    return {"settings": {"file_clips": settings.train_clips,
                         "epochs": "2 warm-up (the step compiles three times), 1 warm, 1 cold",
                         "optimizer": "SGD(0.01, momentum=0.9)", "validation_ratio": 0.0,
                         "models": {name: kwargs for name, kwargs, _, _ in settings.train_runs}},
            "runs": runs}


def _train_fields(record: dict) -> dict:
    fields = {"steps_per_epoch": None, "warmup_seconds": None, "warm": None, "cold": None, "loss": None}
    return {**fields, **record, "error": record.get("error")}


def part_torch(settings: Settings, mode: str, file: str, deadline: float, report: dict) -> dict:
    if _version("torch") is None or _version("torchvision") is None:
        raise Skipped("PyTorch or torchvision is not installed here")
    items = [{"batch_size": batch, "num_workers": workers}
             for batch in settings.batch_sizes for workers in settings.torch_workers]
    spec = {"file": file, "classes": settings.classes, "items": items, "torch_warmup": settings.torch_warmup,
            "torch_steps": settings.torch_steps}
    env = _worker_env(**({"CUDA_VISIBLE_DEVICES": ""} if mode == "cpu" else {}))
    records = _run_items("torch", spec, len(items), deadline, env)
    runs = [{**item, "step_ms": None, "clips_per_second": None, "data_wait_ms": None, "data_wait_fraction": None,
             **record, "error": record.get("error")} for item, record in zip(items, records)]
    return {"settings": {"model": "torchvision.models.video.r2plus1d_18", "autocast": "bfloat16",
                         "optimizer": "SGD(0.01, momentum=0.9)",
                         "loader": "DataLoader(shuffle=True, pin_memory=on GPU, drop_last=True, prefetch_factor=2) "
                                   "over bench au's ClipDataset (one h5py read per clip)",
                         "input": "uint8 to float on the device, /255", "warmup_steps": settings.torch_warmup,
                         "steps": settings.torch_steps},
            "runs": runs}


def au_compute_ms(train: dict, batch_size: int) -> tuple[float, str]:
    """The emulated step: the measured warm step nearest to r2plus1d_18 in mixed_bfloat16 at
    ``batch_size`` (that model first, then that precision, then the nearest batch), else bench
    au's 30 ms."""
    runs = [r for r in train.get("runs", []) if r.get("warm")]
    runs.sort(key=lambda r: (r["model"] != "r2plus1d_18", r["precision"] != "mixed_bfloat16",
                             abs(r["batch_size"] - batch_size)))
    if runs:
        run = runs[0]
        return run["warm"]["step_ms"], (f"train_model's warm step, {run['model']} {run['precision']} "
                                        f"batch {run['batch_size']}")
    return 30.0, "bench au's default: no train_model step was measured"


def part_au(settings: Settings, mode: str, file: str, deadline: float, report: dict) -> dict:
    from .io import warm

    compute_ms, source = au_compute_ms(report["parts"]["train_model"], settings.au_batch_size)
    loaders = ["distributed_h5"] + (["torch-dataloader"] if _version("torch") else [])
    warm_rate, cold_rate = au.check_eviction(file)
    rows, errors = [], []
    for cache in ("warm", "cold"):
        if cache == "warm":
            warm(file)  # no point evicts it before the cold ones
        for loader in loaders:
            config = au.Config(file, loader, settings.au_batch_size, compute_ms, settings.au_seconds,
                               torch_workers=settings.au_torch_workers)
            for ranks in settings.au_ranks:
                point = {"loader": loader, "cache": cache, "ranks": ranks}
                left = deadline - time.time()
                if left < 2:
                    errors.append({**point, "error": "skipped: the part's time budget was spent"})
                    continue
                if cache == "cold":
                    au.evict(file)
                try:
                    times, clip_bytes = _au_point(config, ranks, timeout=left)
                except Exception as exc:  # one point's failure is recorded; the next still runs
                    errors.append({**point, "error": one_line(exc)})
                    continue
                row = au.summarise(times, file=os.path.basename(file), loader=loader, cache=cache,
                                   batch_size=settings.au_batch_size, compute_ms=compute_ms, clip_bytes=clip_bytes,
                                   settings=_au_settings(config))
                rows.append({**asdict(row), "error": None})
    if not rows and errors:
        raise RuntimeError(f"no AU point ran: {errors[0]['error']}")
    return {"settings": {"compute_ms": compute_ms, "compute_source": source, "batch_size": settings.au_batch_size,
                         "ranks": list(settings.au_ranks), "seconds": settings.au_seconds,
                         "raw_read_gb_per_second": {"warm": warm_rate, "cold": cold_rate}},
            "rows": rows, "errors": errors}


def _au_settings(config: au.Config) -> str:
    if config.loader == "distributed_h5":
        return (f"Feeder(workers={config.feeder_workers}) over BatchReader(threads={config.threads or 'default'}), "
                "iterated as train_model feeds Keras on JAX (Feeder.source())")
    return au.settings(config)


def _au_point(config: au.Config, ranks: int, timeout: float) -> tuple[list[au.RankTimes], int]:
    """``ranks`` emulated accelerators of one loader: bench au's own ranks for the torch loader;
    for the package's reader, ranks of this module that iterate the Feeder as train_model does on
    JAX (bench au's iterate its tf.data pipeline, and the GPU machine has no TensorFlow)."""
    if config.loader != "distributed_h5":
        return au.run_point(config, ranks, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="dh5-device-au-") as scratch:
        env = _worker_env()
        logs = [open(os.path.join(scratch, f"log.{rank}"), "w+") for rank in range(ranks)]
        processes = [subprocess.Popen([sys.executable, "-m", "distributed_h5.bench.device", "--au-rank",
                                       json.dumps(asdict(config)), "--rank", str(rank), "--size", str(ranks),
                                       "--scratch", scratch], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                     for rank, log in enumerate(logs)]
        au.wait_or_kill(processes, timeout)
        try:
            failed = next(((rank, p.returncode) for rank, p in enumerate(processes) if p.returncode != 0), None)
            if failed is not None:
                rank, code = failed
                logs[rank].seek(0)
                last = [line for line in logs[rank].read().splitlines() if line.strip()]
                raise RuntimeError(f"rank {rank} of {ranks} exited {code}"
                                   f"{' (killed at the time budget)' if code < 0 else ''}: "
                                   f"{last[-1] if last else 'no output'}")
        finally:
            for log in logs:
                log.close()
        times, clip_bytes = [], 0
        for rank in range(ranks):
            with open(os.path.join(scratch, f"times.{rank}.json")) as handle:
                record = json.load(handle)
            clip_bytes = record.pop("clip_bytes")
            times.append(au.RankTimes(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}))
        return times, clip_bytes


def _au_rank(config: au.Config, rank: int, size: int, scratch: str) -> None:
    """One emulated accelerator on the package's reader, as bench au's ``rank_main``, on bench au's shard plan."""
    from ..feeding import Feeder
    from ..data.reader import BatchReader

    info, plan = au._plan(config, rank, size)
    reader = BatchReader(config.file, threads=config.threads)
    try:
        feeder = Feeder(plan, reader, workers=config.feeder_workers)
        au._barrier(scratch, rank, size)
        # iter(feeder) is what Feeder.source() gives Keras on its JAX backend (no TensorFlow).
        times = au.run_steps(iter(feeder), compute_seconds=config.compute_ms / 1e3, max_steps=feeder.steps(0),
                             seconds=config.seconds)
    finally:
        reader.close()
    with open(os.path.join(scratch, f"times.{rank}.json"), "w") as handle:
        json.dump({"clip_bytes": info.clip_bytes, **asdict(times)}, handle)


# --- the driver -------------------------------------------------------------------------------
PARTS = (("train_model", part_train_model), ("torch", part_torch), ("au", part_au))


def _write_file(path: str, clips: int, frames: int, size: int, classes: int) -> float:
    """Write one synthetic file, flushed to disk (the page cache can evict clean pages only); its seconds."""
    from ..data.synthetic import make_synthetic

    started = time.perf_counter()
    if not os.path.exists(path):
        make_synthetic(path, samples=clips, frames=frames, size=(size, size), classes=classes, chunks="clip",
                       progress=False)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def write_files(settings: Settings, data_dir: str) -> dict:
    """The train_model file and the bench file, synthetic, one clip per chunk, on ``data_dir``,
    written side by side (each takes a core)."""
    from concurrent.futures import ProcessPoolExecutor

    shape = [settings.frames, 3, settings.size, settings.size]
    files = {name: {"path": os.path.join(data_dir, f"device-{name}-{clips}.h5"), "clips": clips, "clip_shape": shape}
             for name, clips in (("train", settings.train_clips), ("bench", settings.bench_clips))}
    with ProcessPoolExecutor(len(files)) as pool:
        seconds = {name: pool.submit(_write_file, entry["path"], entry["clips"], settings.frames, settings.size,
                                     settings.classes) for name, entry in files.items()}
        for name, entry in files.items():
            entry["write_seconds"] = seconds[name].result()
            entry["bytes"] = os.path.getsize(entry["path"])
    return files


def run(mode: str, out_dir: str, data_dir: str, *, deadline: float | None = None, parts: tuple[str, ...] | None = None,
        keep_data: bool = False) -> dict:
    """Measure every part of ``mode`` and write ``out_dir``/device-bench.{json,md}; returns the report."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
    settings = SETTINGS[mode]
    started = time.time()
    end = started + (deadline or settings.deadline)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    report = {"schema": SCHEMA, "mode": mode, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "elapsed_seconds": None, "environment": environment(data_dir), "files": None,
        "parts": {name: {"status": "skipped", "error": "not run"} for name, _ in PARTS}}
    try:
        report["files"] = write_files(settings, data_dir)
        _write_outputs(report, out_dir)
        for name, measure in PARTS:
            if parts is not None and name not in parts:
                report["parts"][name] = {"status": "skipped", "error": "skipped: not asked for (--parts)"}
                continue
            part_end = min(end, time.time() + settings.budgets[name])
            file = report["files"]["train" if name == "train_model" else "bench"]["path"]
            print(f"device-bench: {name} (until +{part_end - started:.0f} s)", flush=True)
            part_start = time.time()
            try:
                result = measure(settings, mode, file, part_end, report)
                report["parts"][name] = {"status": "ok", "error": None, **result}
            except Skipped as exc:
                report["parts"][name] = {"status": "skipped", "error": str(exc)}
            except Exception as exc:  # a failed part is recorded; the next one still runs
                report["parts"][name] = {"status": "error", "error": one_line(exc)}
            report["parts"][name]["seconds"] = time.time() - part_start
            report["elapsed_seconds"] = time.time() - started
            _write_outputs(report, out_dir)  # what is measured so far survives a kill of the whole run
    except Exception as exc:  # the files could not be written: every part says so
        for name, _ in PARTS:
            report["parts"][name] = {"status": "error", "error": f"no benchmark file: {one_line(exc)}"}
    finally:
        report["elapsed_seconds"] = time.time() - started
        _write_outputs(report, out_dir)
        if not keep_data and report.get("files"):
            for entry in report["files"].values():
                with contextlib.suppress(OSError):
                    os.unlink(entry["path"])
    return report


def _write_outputs(report: dict, out_dir: str) -> None:
    path = os.path.join(out_dir, "device-bench.json")
    with open(path + ".partial", "w") as handle:
        json.dump(report, handle, indent=1)
    os.replace(path + ".partial", path)
    with open(os.path.join(out_dir, "device-bench.md"), "w") as handle:
        handle.write(markdown(report))


# --- the markdown table -----------------------------------------------------------------------
def _cell(value, digits: int = 1) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown(report: dict) -> str:
    """The report as markdown: the machine, then one table per part."""
    env, parts = report["environment"], report["parts"]
    lines = [f"# distributed_h5 device benchmark ({report['mode']} mode, {report['started']})", "",
             "| | |", "| --- | --- |",
             f"| device | {_cell(env['device'])} |", f"| driver | {_cell(env['driver']) or 'none'} |",
             f"| JAX | {_cell(env['jax'])} (backend {_cell(env['jax_backend'])}, devices "
             f"{_cell(', '.join(env['jax_devices'] or []))}) |",
             f"| Keras | {_cell(env['keras'])} |",
             f"| PyTorch | {_cell(env['torch']) or 'not installed'}, torchvision {_cell(env['torchvision']) or '-'} |",
             f"| distributed_h5 | {_cell(env['distributed_h5'])} (commit {_cell(env['commit']) or 'unknown'}) |",
             f"| Python, CPUs | {_cell(env['python'])}, {env['cpus']} |",
             f"| data | {_cell(env['data_dir'])} ({_cell(env['data_filesystem'])}) |",
             f"| elapsed | {_cell(report['elapsed_seconds'], 0)} s |", ""]
    for entry in (report.get("files") or {}).values():
        shape = "x".join(map(str, entry["clip_shape"]))
        lines.append(f"- {os.path.basename(entry['path'])}: {entry['clips']} clips of {shape} uint8, "
                     f"{entry['bytes'] / 1e6:.0f} MB, written in {entry['write_seconds']:.1f} s")
    lines += ["", "## distributed_h5 `train_model`, JAX engine", ""]
    train = parts["train_model"]
    if train["status"] != "ok":
        lines.append(f"{train['status']}: {_cell(train['error'])}")
    else:
        lines += ["| model | precision | batch | steps/epoch | warm step ms | warm clips/s | warm data wait | "
                  "cold step ms | cold clips/s | cold data wait | warm-up s | error |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in train["runs"]:
            warm, cold = r["warm"] or {}, r["cold"] or {}
            lines.append(f"| {r['model']} | {r['precision']} | {r['batch_size']} | {_cell(r['steps_per_epoch'])} | "
                         f"{_cell(warm.get('step_ms'))} | {_cell(warm.get('clips_per_second'))} | "
                         f"{_cell(warm.get('data_wait_fraction'), 4)} | {_cell(cold.get('step_ms'))} | "
                         f"{_cell(cold.get('clips_per_second'))} | {_cell(cold.get('data_wait_fraction'), 4)} | "
                         f"{_cell(sum(r['warmup_seconds'] or []) or None)} | {_cell(r['error'])} |")
    lines += ["", "## torchvision `r2plus1d_18` on `torch.utils.data.DataLoader`, bf16 autocast", ""]
    torch_part = parts["torch"]
    if torch_part["status"] != "ok":
        lines.append(f"{torch_part['status']}: {_cell(torch_part['error'])}")
    else:
        lines += ["| batch | num_workers | step ms | clips/s | data wait ms/step | data wait fraction | error |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in torch_part["runs"]:
            lines.append(f"| {r['batch_size']} | {r['num_workers']} | {_cell(r['step_ms'])} | "
                         f"{_cell(r['clips_per_second'])} | {_cell(r['data_wait_ms'], 2)} | "
                         f"{_cell(r['data_wait_fraction'], 4)} | {_cell(r['error'])} |")
    lines += ["", "## AU: bench au's emulated accelerators at the measured step", ""]
    au_part = parts["au"]
    if au_part["status"] != "ok":
        lines.append(f"{au_part['status']}: {_cell(au_part['error'])}")
    else:
        s = au_part["settings"]
        lines += [f"Compute {s['compute_ms']:.1f} ms per step ({s['compute_source']}), batch {s['batch_size']}; "
                  f"raw read {s['raw_read_gb_per_second']['warm']:.2f} GB/s warm, "
                  f"{s['raw_read_gb_per_second']['cold']:.2f} GB/s right after eviction.", "",
                  "| loader | cache | ranks | AU | AU min | clips/s | MB/s | data wait ms | error |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in au_part["rows"]:
            lines.append(f"| {r['loader']} | {r['cache']} | {r['ranks']} | {r['au']:.3f} | {r['au_min']:.3f} | "
                         f"{r['samples_per_second']:.1f} | {r['mb_per_second']:.0f} | {r['data_wait_ms']:.2f} | |")
        for e in au_part["errors"]:
            lines.append(f"| {e['loader']} | {e['cache']} | {e['ranks']} | | | | | | {_cell(e['error'])} |")
    return "\n".join(lines) + "\n"


# --- python -m distributed_h5.bench.device -------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distributed_h5.bench.device",
                                     description="One bounded benchmark for a lent GPU machine (or --mode cpu here).")
    parser.add_argument("--mode", choices=MODES, default="gpu")
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench-results/device",
                        help="where device-bench.{json,md} go (default: $OUT, else bench-results/device)")
    parser.add_argument("--data", default=None, help="where the benchmark files are written (default: data/device)")
    parser.add_argument("--deadline", type=float, help="seconds for the whole run (default: the mode's)")
    parser.add_argument("--parts", help=f"comma-separated subset of {','.join(name for name, _ in PARTS)}")
    parser.add_argument("--keep-data", action="store_true", help="keep the benchmark files")
    # Internal: the worker processes.
    parser.add_argument("--worker", choices=("train_model", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--items", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--au-rank", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        with open(args.spec) as handle:
            spec = json.load(handle)
        _items_worker(args.worker, spec, [int(i) for i in args.items.split(",")], args.results)
        return
    if args.au_rank:
        _au_rank(au.Config(**json.loads(args.au_rank)), args.rank, args.size, args.scratch)
        return
    parts = None
    if args.parts:
        parts = tuple(name.strip() for name in args.parts.split(","))
        unknown = [name for name in parts if name not in dict(PARTS)]
        if unknown:
            parser.error(f"--parts must name some of {', '.join(dict(PARTS))}. Received: {args.parts}")
    report = run(args.mode, args.out, args.data or os.path.join(ROOT, "data", "device"), deadline=args.deadline,
                 parts=parts, keep_data=args.keep_data)
    print(markdown(report))  # the figures in the log too, should the files not come back
    for name, part in report["parts"].items():
        print(f"device-bench: {name}: {part['status']}{': ' + part['error'] if part['error'] else ''}")
    print(f"device-bench: {os.path.join(args.out, 'device-bench.json')}, device-bench.md "
          f"({report['elapsed_seconds']:.0f} s)")


if __name__ == "__main__":
    main()

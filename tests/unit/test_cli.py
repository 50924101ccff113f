"""The command line: ordinary mistakes give one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from distributed_h5 import DatasetError, describe


def run_cli(*args, env=None, timeout=300):
    environment = dict(os.environ, **(env or {}))
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it: the CLI itself keeps TensorFlow quiet
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *map(str, args)], capture_output=True,
                          text=True, env=environment, timeout=timeout)


def bad_labels(path):
    """12 clips whose Y rows 3, 7 and 8 are not one-hot."""
    y = np.eye(3, dtype="u1")[np.arange(12) % 3]
    y[3] = 0
    y[7] = [1, 1, 0]
    y[8] = [0, 2, 0]
    with h5py.File(path, "w") as file:
        file.create_dataset("X", data=np.zeros((12, 2, 1, 8, 8), dtype="u1"))
        file.create_dataset("Y", data=y)
        file.attrs["sample_count"] = 12
    return path


def test_labels_are_validated_at_open_and_reported_by_row(tmp_path):
    path = bad_labels(tmp_path / "labels.h5")
    assert describe(path).sample_count == 12  # the layout alone is fine
    with pytest.raises(DatasetError) as caught:
        describe(path, labels=True)
    assert str(caught.value) == (f"{path}: row 3 of 'Y' is [0, 0, 0], expected one-hot (a single 1, the rest 0); "
                                 "3 bad row(s) of the 12 in use: 3, 7, 8")


def test_train_reports_bad_labels_in_one_line_before_building_a_model(tmp_path):
    path = bad_labels(tmp_path / "labels.h5")
    result = run_cli("train", path, "--epochs", 1, "--batch-size", 2, "--checkpoint-dir", tmp_path / "ckpt")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"distributed-h5 train: error: {path}: row 3 of 'Y' is [0, 0, 0], expected one-hot (a single 1, the rest 0); "
        "3 bad row(s) of the 12 in use: 3, 7, 8")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ckpt").exists()  # stopped before anything was built or written


@pytest.mark.parametrize("args, line", [
    (["train", "f.h5", "--epochs", "0"],
     "distributed-h5 train: error: argument --epochs: must be an integer >= 1, got 0 (see distributed-h5 train --help)"),
    (["make-synthetic", "out.h5", "--samples", "many"],
     "distributed-h5 make-synthetic: error: argument --samples: must be an integer >= 1, got 'many' "
     "(see distributed-h5 make-synthetic --help)"),
    (["inspect"], "distributed-h5 inspect: error: the following arguments are required: file "
                  "(see distributed-h5 inspect --help)"),
    (["convert", "src", "out.h5", "--frames", "8", "--size", "4", "4", "--fit", "stretch"],
     "distributed-h5 convert: error: argument --fit: invalid choice: 'stretch' (choose from 'crop', 'pad') "
     "(see distributed-h5 convert --help)"),
    ([], "distributed-h5: error: the following arguments are required: command (see distributed-h5 --help)"),
])
def test_usage_mistakes_are_one_line_with_status_2(args, line):
    result = run_cli(*args)
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", "")


@pytest.mark.parametrize("env, args, line", [
    ({"KERAS_BACKEND": "tensorflow"}, ["--engine", "jax"],
     "--engine jax runs Keras on jax, but KERAS_BACKEND=tensorflow: unset KERAS_BACKEND or pick the engine that fits it"),
    ({"KERAS_BACKEND": "jax"}, ["--engine", "horovod"],
     "--engine horovod runs Keras on tensorflow, but KERAS_BACKEND=jax: unset KERAS_BACKEND or pick the engine that "
     "fits it"),
    ({"DH5_ENGINE": "mxnet"}, [], "--engine (or DH5_ENGINE) must be one of ['horovod', 'jax']. Received: 'mxnet'"),
])
def test_an_engine_that_does_not_fit_the_backend_is_one_line(tmp_path, env, args, line):
    result = run_cli("train", tmp_path / "f.h5", *args, env=env)
    assert (result.returncode, result.stderr) == (2, f"distributed-h5 train: error: {line}\n")


JAX_AFTER_TRAINING = """
import sys
import keras
import numpy as np
from distributed_h5 import evaluate_model, init_engine, train_model
from distributed_h5.models import build_model
init_engine("jax")
model = build_model("video", (2, 1, 8, 8), 2, width=2, depth=1, seed=0)
history = train_model(model, sys.argv[1], batch_size=4, epochs=2, steps_per_epoch=2, verbose=0)
predicted = model.predict(np.zeros((5, 2, 1, 8, 8), "uint8"), verbose=0)
evaluation = evaluate_model(model, sys.argv[1], batch_size=4)
print(f"epochs={history.epoch} timed_steps={history.run.timed_steps} distribution={keras.distribution.distribution()} "
      f"predicted={predicted.shape} evaluated={evaluation.samples}")
"""


def test_jax_engine_trains_in_one_process(tmp_path):
    """`--engine jax` with no launcher: Keras on JAX, one process. Run from a batch script's
    environment (a job of 2 tasks, outside srun), as a user's sbatch script would, it is still
    one process; under horovodrun it is one line."""
    from distributed_h5 import make_synthetic

    path = make_synthetic(tmp_path / "d.h5", samples=24, frames=2, channels=1, size=(8, 8), classes=2, progress=False)
    args = ("train", path, "--engine", "jax", "--epochs", 1, "--batch-size", 4, "--width", 2, "--depth", 1,
            "--verbose", 0)
    batch_script = {"DH5_ENGINE": "", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}
    result = run_cli(*args, env=batch_script)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("summary: ranks=1 epochs=1 accuracy=") and "val_loss=" in summary, result.stdout
    # One rank of horovodrun: nothing to join. Through the Python API, in the same process as
    # train_model: a capped run, then the caller's model is its own again (no distribution
    # left set, variables on this process), so predict and evaluate_model run in one process.
    result = subprocess.run([sys.executable, "-c", JAX_AFTER_TRAINING, str(path)], capture_output=True, text=True,
                            env=dict(os.environ, DH5_ENGINE="", HOROVOD_RANK="0", HOROVOD_SIZE="1",
                                     KERAS_BACKEND="jax"), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "epochs=[0, 1] timed_steps=3 distribution=None predicted=(5, 2) evaluated=8"
    result = run_cli(*args, env={"DH5_ENGINE": "", "HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"})
    assert (result.returncode, result.stderr.splitlines()[-1]) == (1, (
        "distributed-h5 train: error: the jax engine runs under mpirun or srun, which JAX finds on its own; "
        "horovodrun starts the horovod engine (leave out --engine jax / DH5_ENGINE=jax)"))


def test_elastic_outside_an_elastic_launch_is_one_line(tmp_path):
    from distributed_h5 import make_synthetic

    path = make_synthetic(tmp_path / "d.h5", samples=24, frames=2, channels=1, size=(8, 8), classes=2, progress=False)
    result = run_cli("train", path, "--elastic", "--epochs", 1, "--width", 2, "--depth", 1, env={"DH5_ENGINE": ""})
    assert (result.returncode, result.stderr.splitlines()[-1]) == (2, (
        "distributed-h5 train: error: elastic training needs the horovod engine launched in elastic mode: horovodrun "
        "--gloo --min-np N --max-np M --host-discovery-script SCRIPT (launch/horovodrun.sh --elastic)"))


def test_missing_input_file_is_one_line(tmp_path):
    result = run_cli("inspect", tmp_path / "nope.h5")
    assert (result.returncode, result.stderr) == (2, f"distributed-h5 inspect: error: {tmp_path}/nope.h5: no such file\n")


def test_version():
    from distributed_h5 import __version__

    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"distributed-h5 {__version__}\n")


def test_doctor_one_line_per_check_and_required_checks(tmp_path):
    from importlib.metadata import PackageNotFoundError, version

    from distributed_h5.doctor import CHECKS

    result = run_cli("doctor", "--require", "tensorflow,keras,horovod,gloo,mpi,locking", "--dir", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("distributed_h5 ")
    assert [line.split()[0] for line in lines[1:]] == list(CHECKS)
    found = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    installed = []
    for package in ("tensorflow", "tensorflow-cpu"):
        try:
            installed.append(version(package))
        except PackageNotFoundError:
            pass
    assert found["tensorflow"][0] == "ok" and found["tensorflow"][1].split()[0] in installed
    assert found["locking"][0] == "ok" and found["locking"][1].startswith(f"works in {tmp_path};")
    assert found["horovod"][1].startswith("0.28.1 with TensorFlow; controllers: gloo, mpi; NCCL: ")
    assert result.stderr == ""  # no TensorFlow start-up noise

    # A check that fails and was required: exit status 1, and the last line says which.
    missing = run_cli("doctor", "--require", "locking", "--dir", tmp_path / "absent")
    assert missing.returncode == 1
    assert missing.stdout.splitlines()[-1] == "missing what was required: locking"
    assert [line for line in missing.stdout.splitlines() if line.startswith("locking")][0].startswith(
        f"locking     no  not checked: cannot write in {tmp_path}/absent (No such file or directory)")

    unknown = run_cli("doctor", "--require", "horovod,cuda")
    assert (unknown.returncode, unknown.stderr) == (
        2, f"distributed-h5 doctor: error: argument --require: takes names from {','.join(CHECKS)}, got cuda "
           "(see distributed-h5 doctor --help)\n")


def test_no_tensorflow_noise_unless_asked_for(tmp_path):
    from distributed_h5.quiet import NOISE
    from distributed_h5.synthetic import make_synthetic

    path = make_synthetic(tmp_path / "tiny.h5", samples=24, frames=4, size=(12, 12), classes=2, progress=False)
    args = ("train", path, "--epochs", 1, "--batch-size", 4, "--width", 4, "--depth", 1, "--verbose", 0)
    quiet = run_cli(*args)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("summary: ranks=1 epochs=1 ")
    loud = run_cli(*args, env={"DH5_TF_LOG": "1"})  # the opt-in brings TensorFlow's own logs back
    assert loud.returncode == 0, loud.stderr
    assert "All log messages before absl::InitializeLog() is called" in loud.stderr
    assert sum(marker in loud.stderr for marker in NOISE) >= 2  # which others appear depends on the CPU


def corrupt_chunk(tmp_path, source, row):
    """A copy of ``source`` (gzip, one clip per chunk) whose chunk ``row`` no longer inflates."""
    path = tmp_path / f"corrupt-{row}.h5"
    path.write_bytes(source.read_bytes())
    with h5py.File(path, "r", locking=False) as file:
        info = file["X"].id.get_chunk_info_by_coord((row, 0, 0, 0, 0))
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset)
        handle.write(b"\xff" * 16)
    return path


def unregistered_filter(path):
    """X chunked through filter 32099, which no HDF5 here can decode (written raw, bypassing the filter)."""
    with h5py.File(path, "w") as file:
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((1, 2, 1, 4, 4))
        plist.set_filter(32099, h5py.h5z.FLAG_OPTIONAL)
        space = h5py.h5s.create_simple((6, 2, 1, 4, 4))
        x = h5py.h5d.create(file.id, b"X", h5py.h5t.NATIVE_UINT8, space, dcpl=plist)
        for row in range(6):
            x.write_direct_chunk((row, 0, 0, 0, 0), bytes(32), filter_mask=0)
        file.create_dataset("Y", data=np.eye(2, dtype="u1")[np.arange(6) % 2])
        file.attrs["sample_count"] = 6
    return path


def test_inspect_reads_clips_so_a_corrupt_chunk_is_one_line(tmp_path, files):
    path = corrupt_chunk(tmp_path, files["gzip"], 28)  # 28 is among the clips read at open
    result = run_cli("inspect", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"distributed-h5 inspect: error: {path}: clip 28 of 'X' cannot be read (corrupt "
                                    "or truncated chunk, or a filter this HDF5 cannot decode; filters: deflate): ")
    assert result.stderr.count("\n") == 1


def test_inspect_verify_finds_a_corrupt_chunk_anywhere(tmp_path, files):
    path = corrupt_chunk(tmp_path, files["gzip"], 5)  # not among the few clips read by default
    assert run_cli("inspect", path).returncode == 0
    result = run_cli("inspect", path, "--verify")
    assert result.returncode == 2
    assert result.stderr.startswith(f"distributed-h5 inspect: error: {path}: clip 5 of 'X' cannot be read")


def test_an_unregistered_filter_is_one_line_at_open(tmp_path):
    from distributed_h5.reader import BatchReader

    path = unregistered_filter(tmp_path / "filter.h5")
    result = run_cli("inspect", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"distributed-h5 inspect: error: {path}: clip 0 of 'X' cannot be read (corrupt "
                                    "or truncated chunk, or a filter this HDF5 cannot decode; filters: 32099): ")
    assert result.stderr.count("\n") == 1
    with pytest.raises(DatasetError, match="clip 0 of 'X' cannot be read"):  # at open, not mid-training
        BatchReader(path)


def test_truncated_chunked_file_is_one_line(tmp_path, files):
    path = tmp_path / "cut.h5"
    data = files["lzf"].read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    result = run_cli("inspect", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"distributed-h5 inspect: error: {path}: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_scaleoffset_reads_exactly(tmp_path):
    from distributed_h5.reader import BatchReader

    data = np.arange(6 * 2 * 1 * 4 * 4, dtype="u1").reshape(6, 2, 1, 4, 4)
    path = tmp_path / "scaleoffset.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("X", data=data, chunks=(1, 2, 1, 4, 4), scaleoffset=0)
        file.create_dataset("Y", data=np.eye(2, dtype="u1")[np.arange(6) % 2])
        file.attrs["sample_count"] = 6
    assert run_cli("inspect", path).returncode == 0
    with BatchReader(path) as reader:
        assert reader.method == "hdf5"
        np.testing.assert_array_equal(reader.read(np.arange(6))[0], data)


def test_without_tensorflow_train_is_one_line_and_doctor_says_what_is_missing(tmp_path):
    program = ("import sys; sys.modules['tensorflow'] = None  # as if TensorFlow were not installed\n"
               "from distributed_h5.cli import main; sys.exit(main(sys.argv[1:]))")

    def run(*args):
        return subprocess.run([sys.executable, "-c", program, *map(str, args)], capture_output=True, text=True,
                              timeout=120)

    train = run("train", tmp_path / "any.h5")
    assert train.returncode == 1
    assert train.stderr.startswith("distributed-h5 train: error: TensorFlow cannot be imported (")
    assert train.stderr.endswith("; run `make install`\n") and train.stderr.count("\n") == 1
    doctor = run("doctor", "--require", "tensorflow", "--dir", tmp_path)
    assert doctor.returncode == 1
    assert [line.split(None, 2)[:2] for line in doctor.stdout.splitlines()[1:3]] == [["tensorflow", "no"],
                                                                                    ["keras", "no"]]
    assert doctor.stdout.splitlines()[-1] == "missing what was required: tensorflow"


def test_inspect_shows_inconsistent_provenance_as_far_as_it_is_consistent_with_a_note(tmp_path):
    from distributed_h5 import make_synthetic

    path = make_synthetic(tmp_path / "d.h5", samples=12, frames=2, channels=1, size=(8, 8), classes=3, progress=False)
    with h5py.File(path, "a") as file:
        file["Y"][...] = np.eye(3, dtype=file["Y"].dtype)[np.arange(12) % 3]
        file.attrs["class_names"] = np.array([b"caf\xe9", "dog"], dtype=h5py.string_dtype())  # 2 names, not UTF-8
        file.create_dataset("source_paths", data=np.array([f"c{k}.mp4" for k in range(10)], dtype=h5py.string_dtype()))
        file.create_dataset("frame_counts", data=np.array([b"30"] * 12))
    result = run_cli("inspect", path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[lines.index("class counts  0: 4, 1: 4, 2: 4"):] == [
        "class counts  0: 4, 1: 4, 2: 4",
        "class_names   attribute, 2: caf\\xe9, dog",
        "source_paths  dataset (10,) strings, c0.mp4 ... c9.mp4",
        "frame_counts  dataset (12,) |S2",
        "generator     attribute, distributed_h5.synthetic",
        "note          class_names has 2 name(s) for the 3 columns of Y; classes are counted by number",
        "note          source_paths has 10 entries for the 12 rows of X",
        "note          frame_counts is (12,) |S2, expected one number per row of X; not summarised",
    ]


def test_inspect_checkpoint_of_a_record_without_a_field_says_so(tmp_path):
    import json
    import zipfile

    checkpoint = tmp_path / "old.keras"
    config = {"seed": 0, "validation_ratio": 0.3, "sample_count": 12, "fingerprint": "0", "path": "d.h5",
              "file_bytes": 0, "remainder": "pad", "batch_size": 4, "ranks": 1, "global_batch": 4, "base_batch": 4,
              "precision": "float32", "version": "0"}  # no engine: written before engines existed
    with zipfile.ZipFile(checkpoint, "w") as archive:
        archive.writestr("distributed_h5.json", json.dumps({"format": 1, "position": {"epoch": 1, "sample": 0},
                                                            "config": config}))
    result = run_cli("inspect-checkpoint", checkpoint)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == f"checkpoint    {checkpoint}"
    assert result.stdout.splitlines()[-1] == (
        "note          the record's config is not a whole run configuration (RunConfig.__init__() missing 1 required "
        "positional argument: 'engine'); evaluate and predict refuse this checkpoint")
    with zipfile.ZipFile(checkpoint, "w") as archive:  # a record of another shape altogether
        archive.writestr("distributed_h5.json", json.dumps({"position": [1, 0], "config": config}))
    result = run_cli("inspect-checkpoint", checkpoint)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", (
        f"distributed-h5 inspect-checkpoint: error: {checkpoint}: its record (distributed_h5.json) cannot be read: "
        "AttributeError(\"'list' object has no attribute 'get'\")\n"))


@pytest.mark.parametrize("seed", ["-1", "1" + "0" * 24, str(2**63)])
@pytest.mark.parametrize("command", ["make-synthetic", "train", "evaluate", "predict"])
def test_a_seed_out_of_range_names_the_flag_and_the_range(tmp_path, command, seed):
    args = {"make-synthetic": [tmp_path / "out.h5", "--samples", 4], "train": [tmp_path / "f.h5"],
            "evaluate": [tmp_path / "f.h5", "--checkpoint", "c.keras"],
            "predict": [tmp_path / "f.h5", "--checkpoint", "c.keras", "--out", tmp_path / "p.csv"]}[command]
    result = run_cli(command, *args, "--seed", seed)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", (
        f"distributed-h5 {command}: error: argument --seed: must be an integer in [0, 9223372036854775807] "
        f"(2**63 - 1), got {seed} (see distributed-h5 {command} --help)\n"))
    assert list(tmp_path.iterdir()) == []


def test_the_largest_seed_is_taken(tmp_path):
    result = run_cli("make-synthetic", tmp_path / "out.h5", "--samples", 4, "--frames", 2, "--size", 4, 4,
                     "--seed", 2**63 - 1)
    assert (result.returncode, result.stdout) == (0, f"wrote {tmp_path / 'out.h5'}\n"), result.stderr


@pytest.mark.parametrize("case", ["locked", "unwritable"])
def test_a_checkpoint_directory_in_use_or_unwritable_is_a_usage_error(tmp_path, case):
    """Status 2 like every user mistake (not 1, kept for failures of the run itself), in one line."""
    import socket

    from distributed_h5 import make_synthetic
    from distributed_h5.checkpoints import DirectoryLock

    path = make_synthetic(tmp_path / "d.h5", samples=24, frames=2, channels=1, size=(8, 8), classes=2, progress=False)
    folder = tmp_path / "runs"
    folder.mkdir()
    checkpoint_dir = folder / "ckpt"
    args = ("train", path, "--epochs", 1, "--batch-size", 4, "--width", 2, "--depth", 1, "--verbose", 0,
            "--checkpoint-dir", checkpoint_dir)
    if case == "locked":
        with DirectoryLock(checkpoint_dir):  # another job training into it
            result = run_cli(*args, env={"DH5_ENGINE": ""})
        line = (f"checkpoint directory {checkpoint_dir} is in use by host {socket.gethostname()} pid {os.getpid()}; "
                "wait for that job to end or use another --checkpoint-dir")
    else:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", folder], check=True)
        else:
            folder.chmod(0o555)
        try:
            result = run_cli(*args, env={"DH5_ENGINE": ""})
        finally:
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", folder], check=True)
            folder.chmod(0o755)
        reason = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
        line = f"cannot write to {checkpoint_dir}: {reason}"
    assert (result.returncode, result.stderr.splitlines()[-1:]) == (2, [f"distributed-h5 train: error: {line}"])
    assert "Traceback" not in result.stderr

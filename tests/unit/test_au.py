"""``bench au``: AU arithmetic from known sleeps and reads, and a short 2-rank run of real processes."""

import csv

import pytest

from distributed_h5 import cli
from distributed_h5.bench import au


class FakeTime:
    """A clock that moves only when the code under test sleeps or reads."""

    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def reads(fake, seconds):
    """A loader whose batch ``i`` takes ``seconds[i]`` to arrive."""
    for i, took in enumerate(seconds):
        fake.now += took
        yield i


def test_au_leaves_out_the_first_read_and_counts_every_later_wait():
    fake = FakeTime()
    times = au.run_steps(reads(fake, [4.0, 0.0, 0.25, 0.5]), compute_seconds=0.25, max_steps=4, seconds=100.0,
                         clock=fake.clock, sleep=fake.sleep)
    assert times.waits == (4.0, 0.0, 0.25, 0.5)
    assert times.computes == (0.25, 0.25, 0.25, 0.25)
    assert times.elapsed == 1.75  # 4 x 0.25 compute + 0.75 of waits; the first 4 s read is left out
    assert au.accelerator_utilisation(times) == 1.0 / 1.75


def test_a_loader_that_keeps_up_gives_au_one():
    fake = FakeTime()
    times = au.run_steps(reads(fake, [2.0] + [0.0] * 9), compute_seconds=0.03, max_steps=10, seconds=100.0,
                         clock=fake.clock, sleep=fake.sleep)
    assert au.accelerator_utilisation(times) == 1.0


def test_a_run_stops_after_the_step_in_which_its_seconds_pass_and_runs_at_least_two_steps():
    fake = FakeTime()
    times = au.run_steps(reads(fake, [0.0] * 100), compute_seconds=0.25, max_steps=100, seconds=1.0,
                         clock=fake.clock, sleep=fake.sleep)
    assert times.steps == 4 and times.elapsed == 1.0
    fake = FakeTime()
    times = au.run_steps(reads(fake, [0.0] * 100), compute_seconds=0.25, max_steps=100, seconds=0.0,
                         clock=fake.clock, sleep=fake.sleep)
    assert times.steps == 2


def test_the_allreduce_decides_when_all_ranks_stop_and_its_time_is_not_compute():
    fake = FakeTime()
    wishes = []

    def allreduce(stop):  # another rank wants to stop after the third step
        wishes.append(stop)
        fake.now += 0.125
        return len(wishes) == 3

    times = au.run_steps(reads(fake, [1.0, 0.0, 0.0, 0.0]), compute_seconds=0.25, max_steps=4, seconds=100.0,
                         allreduce=allreduce, clock=fake.clock, sleep=fake.sleep)
    assert wishes == [False, False, False]
    assert times.allreduces == (0.125, 0.125, 0.125)
    assert au.accelerator_utilisation(times) == 0.75 / 1.125


def test_summarise_averages_au_over_ranks_and_adds_up_throughput():
    fast = au.RankTimes(waits=(3.0, 0.0, 0.0, 0.0), computes=(0.25,) * 4, allreduces=(0.0,) * 4, elapsed=1.0)
    slow = au.RankTimes(waits=(3.0, 0.5, 0.5, 0.5), computes=(0.25,) * 4, allreduces=(0.0,) * 4, elapsed=2.5)
    row = au.summarise([fast, slow], file="f.h5", loader="seed", cache="warm", batch_size=8, compute_ms=250.0,
                       clip_bytes=1_000_000, settings="as written")
    assert row.ranks == 2 and row.steps == 4
    assert row.au == (1.0 + 0.4) / 2 and row.au_min == 0.4
    assert row.samples_per_second == 4 * 8 / 1.0 + 4 * 8 / 2.5  # 32 + 12.8
    assert row.mb_per_second == row.samples_per_second
    assert row.data_wait_ms == 1e3 * (0.0 + 0.5) / 2  # the first step's wait is left out
    assert row.allreduce_ms == 0.0


def _row(loader, ranks, value, cache="warm"):
    return au.Row("f.h5", loader, cache, ranks, 16, 30.0, 0.0, 10, value, value, 1.0, 1.0, 0.0, 0.0, "")


def test_most_ranks_kept_is_the_largest_count_at_au_0_90():
    rows = [_row("a", 1, 0.99), _row("a", 2, 0.95), _row("a", 4, 0.89), _row("b", 1, 0.5),
            _row("a", 1, 0.5, cache="cold")]
    assert au.most_ranks_kept(rows) == {("f.h5", "a", "warm"): 2, ("f.h5", "b", "warm"): 0,
                                        ("f.h5", "a", "cold"): 0}
    assert "warm a                  keeps AU >= 0.90 up to 2 of [1, 2, 4]" in au.verdict(rows)


def test_csv_round_trip(tmp_path):
    rows = [_row("distributed_h5", 2, 0.975), _row("seed", 2, 0.125, cache="cold")]
    au.write_csv(rows, tmp_path / "au.csv")
    assert au.read_csv(str(tmp_path / "au.csv")) == rows


@pytest.mark.parametrize("argv, message", [
    (["--ranks", "0", "FILE"], "--ranks must be comma-separated integers >= 1"),
    (["--ranks", "1,two", "FILE"], "--ranks must be comma-separated integers >= 1"),
    (["--loaders", "distributed_h5,dali", "FILE"], "--loaders must be a comma-separated list of"),
    (["--compute-ms", "0", "FILE"], "--compute-ms must be a number > 0"),
    (["--from-csv", "missing.csv"], "--from-csv: no such file: missing.csv"),
    ([], "bench au needs at least one FILE"),
])
def test_bad_arguments_are_one_line_and_exit_2(files, capsys, argv, message):
    argv = [str(files["clip-chunks"]) if arg == "FILE" else arg for arg in argv]
    assert cli.main(["bench", "au", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_scaling_from_a_missing_csv_is_one_line(capsys):
    assert cli.main(["bench", "scaling", "unused.h5", "--from-csv", "missing.csv", "--project", "8"]) == 2
    assert capsys.readouterr().err.strip() == "distributed-h5 bench: error: --from-csv: no such file: missing.csv"


def test_scaling_launches_each_rank_count_and_batch_once(monkeypatch):
    """The strong point at the most ranks (the default global batch) is the weak one: measured once."""
    from distributed_h5.bench import io, scaling

    launched = []

    def run_point(file, ranks, batch_per_rank, **kwargs):
        launched.append((ranks, batch_per_rank))
        return {"steps": 3, "elapsed": 0.3 * ranks, "wait": 0.01, "compute": 0.08, "reduce": 0.01,
                "gradient_bytes": 160, "read_bytes": 512}

    monkeypatch.setattr(io, "warm", lambda file: None)
    monkeypatch.setattr(scaling, "run_point", run_point)
    rows = scaling.bench_scaling("unused.h5", [2], batch_size=4, steps=3, warmup=1)
    assert launched == [(1, 4), (2, 4), (1, 8)]
    assert [(r.mode, r.ranks, r.batch_per_rank, r.steps) for r in rows] == [
        ("weak", 1, 4, 3), ("weak", 2, 4, 3), ("strong", 1, 8, 3), ("strong", 2, 4, 3)]
    assert rows[1].step_seconds == pytest.approx(0.2) and rows[1].data_wait_fraction == pytest.approx(0.05)


def test_a_two_rank_cold_run_writes_one_row_per_loader(files, tmp_path, capsys):
    """Real processes: 2 ranks of the package's Feeder path and of the seed generator, page cache emptied."""
    out = tmp_path / "au.csv"
    status = cli.main(["bench", "au", str(files["clip-chunks"]), "--ranks", "2", "--compute-ms", "5", "--batch-size",
                       "4", "--seconds", "0.2", "--cold", "--loaders", "distributed_h5,seed", "--csv", str(out)])
    assert status == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(au.FIELDS)
    assert [(r["loader"], r["ranks"], r["batch_size"], r["compute_ms"], r["cache"]) for r in rows] == [
        ("distributed_h5", "2", "4", "5", "cold"), ("seed", "2", "4", "5", "cold")]
    for row in rows:
        assert 0 < float(row["au"]) <= 1 and float(row["au_min"]) <= float(row["au"])
        assert float(row["samples_per_second"]) > 0 and int(row["steps"]) >= 2
    printed = capsys.readouterr().out
    assert "distributed_h5     keeps AU >= 0.90 up to" in printed


def test_the_feeder_hands_tensorflow_64_byte_aligned_batches_with_the_right_clips(files):
    """Aligned batches are what lets TensorFlow take them without a copy (the AU fix)."""
    from distributed_h5 import ShardedSequence
    from distributed_h5.feeding import Feeder, aligned_empty
    from distributed_h5.synthetic import clip_index

    for dtype, shape in (("uint8", (3, 5, 7)), ("float32", (2, 3))):
        array = aligned_empty(shape, dtype)
        assert array.ctypes.data % 64 == 0 and array.shape == shape and array.dtype == dtype
        assert array.flags.c_contiguous
    seq = ShardedSequence(files["contiguous"], batch_size=8, rank=0, size=2, seed=3)
    batches = iter(Feeder.for_sequence(seq, workers=2))
    for expected in seq.epoch_batches(0)[:4]:
        x, _ = next(batches)
        assert x.ctypes.data % 64 == 0
        assert clip_index(x).tolist() == expected.tolist()
    batches.close()
    seq.close()


def test_a_two_rank_run_with_a_gradient_allreduce_under_horovod_gloo(files, tmp_path):
    """--gradient-mb: ranks started by horovodrun --gloo allreduce every step and stop together."""
    times, clip_bytes = au.run_point(au.Config(str(files["contiguous"]), "seed", 4, 5.0, 0.2, gradient_mb=0.01), 2)
    assert clip_bytes == 8 * 3 * 16 * 16
    assert len(times) == 2 and times[0].steps == times[1].steps >= 2  # the stop wish rides in the allreduce
    assert all(t > 0 for rank in times for t in rank.allreduces)


@pytest.fixture
def without_torch(monkeypatch):
    """As if PyTorch were not installed (it is not in the test environment; this holds where it is)."""
    from importlib.util import find_spec

    if find_spec("torch") is not None:
        monkeypatch.setitem(au.NEEDS, "torch-dataloader", ("no_such_module_here",) + au.NEEDS["torch-dataloader"][1:])


def test_default_loaders_leave_out_what_cannot_run_and_say_so_in_one_line(files, capsys, monkeypatch, without_torch):
    called = {}

    def fake_bench_au(paths, ranks, *, loaders, **kwargs):
        called["loaders"] = list(loaders)
        return [_row(name, 1, 0.95) for name in loaders]

    monkeypatch.setattr(au, "bench_au", fake_bench_au)
    assert cli.main(["bench", "au", str(files["clip-chunks"]), "--ranks", "1"]) == 0
    assert called["loaders"] == ["distributed_h5", "tfdata", "seed"]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("note: left out torch-dataloader: PyTorch is not installed (pip install torch, or pip install "
                      "'distributed_h5[bench-torch]')")
    assert out[1] == au.HEADER


def test_a_loader_asked_for_by_name_that_cannot_run_is_one_line_before_any_work(files, capsys, without_torch):
    assert cli.main(["bench", "au", str(files["clip-chunks"]), "--loaders", "seed,torch-dataloader"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", (
        "distributed-h5 bench: error: --loaders torch-dataloader: PyTorch is not installed (pip install torch, or pip "
        "install 'distributed_h5[bench-torch]')\n"))


@pytest.fixture(scope="module")
def jpeg_file(tmp_path_factory):
    from distributed_h5.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("au-jpeg") / "jpeg.h5", samples=12, frames=4, channels=3,
                          size=(16, 24), classes=3, seed=5, progress=False, codec="jpeg")


@pytest.mark.parametrize("layout", ["jpeg", "zstd", "clip-chunks"])
def test_the_peers_read_each_clip_as_the_package_does_with_h5py_and_simplejpeg(files, jpeg_file, layout):
    """The peer loaders' own recipe (per-item h5py read, simplejpeg per JPEG frame) gives the reader's pixels."""
    import numpy as np

    from distributed_h5.data.reader import BatchReader

    path = str(jpeg_file if layout == "jpeg" else files[layout])
    with BatchReader(path) as reader:
        expected, labels = reader.read(np.array([0, 3, 7]))
    dataset = au.ClipDataset(path)
    clips = [dataset[i] for i in (0, 3, 7)]
    assert np.array_equal(np.stack([clip for clip, _ in clips]), expected)
    assert [label for _, label in clips] == np.argmax(labels, axis=1).tolist()
    assert dataset.clips.decodes == (layout != "clip-chunks")
    dataset.clips.close()


def test_the_concurrent_read_reads_every_block_once_in_announced_batches_between_evictions(tmp_path, disk_events):
    path = tmp_path / "blocks.bin"
    path.write_bytes(bytes(range(256)) * 3907)  # 1,000,192 bytes: 15 blocks of 65,536 and a 16,152-byte tail
    done, seconds = au.concurrent_read(str(path), readers=3, block=65536, seconds=60.0, batch=4)
    assert done == 1_000_192 and 0 < seconds < 60
    assert disk_events[0][1:] == disk_events[-1][1:] == (0, 0, au.os.POSIX_FADV_DONTNEED)
    blocks = [65536 * k for k in range(16)]
    reads = [event[1:3] for event in disk_events if event[0] == "read"]
    assert sorted(reads) == [(offset, 65536) for offset in blocks]  # the tail's read asks a whole block
    announced = [event[1:] for event in disk_events[1:-1] if event[0] == "advise"]
    assert sorted(announced) == [(offset, 65536, au.os.POSIX_FADV_WILLNEED) for offset in blocks]
    for index, event in enumerate(disk_events):  # each block announced before it is read
        if event[0] == "read":
            assert ("advise", event[1], 65536, au.os.POSIX_FADV_WILLNEED) in disk_events[:index]


def test_the_concurrent_read_stops_at_its_seconds(tmp_path, disk_events):
    (tmp_path / "x.bin").write_bytes(bytes(65536))
    assert au.concurrent_read(str(tmp_path / "x.bin"), readers=2, block=4096, seconds=0.0)[0] == 0
    assert [event[0] for event in disk_events] == ["advise", "advise"]  # the two evictions, no read


@pytest.mark.parametrize("readers, block, batch, name", [(0, 4096, 16, "readers"), (2, 0, 16, "block"),
                                                         (2.0, 4096, 16, "readers"), (2, 4096, 0, "batch")])
def test_the_concurrent_read_refuses_what_it_cannot_do(tmp_path, readers, block, batch, name):
    (tmp_path / "x.bin").write_bytes(b"x")
    value = dict(readers=readers, block=block, batch=batch)[name]
    with pytest.raises(ValueError, match=f"^{name} must be an integer >= 1. Received: {name}={value!r}$"):
        au.concurrent_read(str(tmp_path / "x.bin"), readers, block, batch=batch)

"""Write docs/BENCHMARKS.md from the files ``make bench`` produced in bench-results/.

    python -m distributed_h5.bench.report bench-results docs/BENCHMARKS.md
"""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        import tensorflow as tf

        stack = f"TensorFlow {tf.__version__}"
    except ImportError:
        stack = "TensorFlow not importable"
    horovod = subprocess.run([sys.executable, "-c", "import horovod; print(horovod.__version__)"],
                             capture_output=True, text=True).stdout.strip() or "not importable"
    return (f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, no GPU; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, {stack}, Horovod {horovod}; measured {date.today().isoformat()}")


def io_table(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    lines = ["| file | layout | method | samples/s | GB/s | × ceiling |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['file']} | {r['layout']} | {r['method']} | {float(r['samples_per_second']):.0f} | "
                     f"{float(r['gb_per_second']):.3f} | {float(r['ratio_to_ceiling']):.3f} |")
    return "\n".join(lines)


def io_summary(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    lines = []
    for file in dict.fromkeys(r["file"] for r in rows):
        chosen = {r["method"].split(" ")[0]: r for r in rows if r["file"] == file}
        best = max((r for name, r in chosen.items() if name.startswith("sequence")),
                   key=lambda r: float(r["gb_per_second"]))
        original = float(chosen["original"]["gb_per_second"])
        lines.append(f"- `{file}`: best ShardedSequence run ({best['method']}) reads at "
                     f"{float(best['ratio_to_ceiling']):.2f}× the sequential ceiling and "
                     f"{float(best['gb_per_second']) / original:.0f}× the original reader.")
    return "\n".join(lines)


def scaling_table(path: Path) -> str:
    rows = list(csv.DictReader(path.open()))
    lines = ["| mode | ranks | batch/rank | samples/s | per rank | efficiency | step ms | data wait ms | compute ms | "
             "allreduce ms | data wait % | allreduce MB/step |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['ranks']} | {r['batch_per_rank']} | {float(r['global_samples_per_second']):.1f} | "
            f"{float(r['per_rank_samples_per_second']):.1f} | {float(r['efficiency']):.2f} | "
            f"{float(r['step_seconds']) * 1e3:.1f} | {float(r['data_wait_seconds']) * 1e3:.2f} | "
            f"{float(r['compute_seconds']) * 1e3:.1f} | {float(r['allreduce_seconds']) * 1e3:.2f} | "
            f"{100 * float(r['data_wait_fraction']):.2f} | {int(r['allreduce_bytes_per_step']) / 1e6:.3f} |")
    return "\n".join(lines)


def models_table(results: Path) -> str:
    """R(2+1)D-18 step times from bench-results/models-<precision>.csv (``make bench-models``)."""
    rows = [row for path in sorted(results.glob("models-*.csv")) for row in csv.DictReader(path.open())]
    if not rows:
        return "(no bench-results/models-*.csv: run `make bench-models`)"
    lines = ["| precision | mode | ranks | batch/rank | step s | compute s | data wait ms | allreduce ms | samples/s | "
             "efficiency |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['mode']} | {r['ranks']} | {r['batch_per_rank']} | "
                     f"{float(r['step_seconds']):.2f} | {float(r['compute_seconds']):.2f} | "
                     f"{float(r['data_wait_seconds']) * 1e3:.2f} | {float(r['allreduce_seconds']) * 1e3:.0f} | "
                     f"{float(r['global_samples_per_second']):.2f} | {float(r['efficiency']):.2f} |")
    return "\n".join(lines)


def models_commands(results: Path) -> str:
    return "\n".join(path.read_text().strip() for path in sorted(results.glob("models-*.command")))


def au_tables(results: Path) -> str:
    """AU per loader against rank count, warm and cold, then every figure of every run."""
    from .au import AU_TARGET, most_ranks_kept, read_csv

    rows = [row for name in ("au-warm.csv", "au-cold.csv") if (results / name).exists()
            for row in read_csv(str(results / name))]
    if not rows:
        return "(no bench-results/au-*.csv: run `make bench-au`)"
    ranks = sorted({r.ranks for r in rows})
    kept = most_ranks_kept(rows)
    lines = ["| loader | page cache | " + " | ".join(f"AU at {p}" for p in ranks) + f" | most ranks at AU ≥ {AU_TARGET:.2f} |",
             "| --- | --- | " + " | ".join("---:" for _ in ranks) + " | ---: |"]
    for cache in ("warm", "cold"):
        for loader in dict.fromkeys(r.loader for r in rows if r.cache == cache):
            by_ranks = {r.ranks: r for r in rows if r.cache == cache and r.loader == loader}
            cells = [f"{by_ranks[p].au:.3f}" if p in by_ranks else "" for p in ranks]
            file = next(iter(by_ranks.values())).file
            lines.append(f"| {loader} | {cache} | " + " | ".join(cells) + f" | {kept[(file, loader, cache)]} |")
    lines += ["", "| loader | page cache | ranks | AU | lowest rank's AU | samples/s | MB/s | data wait ms/step | steps |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.loader} | {r.cache} | {r.ranks} | {r.au:.3f} | {r.au_min:.3f} | {r.samples_per_second:.0f} | "
                     f"{r.mb_per_second:.0f} | {r.data_wait_ms:.2f} | {r.steps} |")
    lines += ["", "Each loader's settings:", ""]
    lines += [f"- `{loader}`: {settings}" for loader, settings in dict.fromkeys((r.loader, r.settings) for r in rows)]
    return "\n".join(lines)


def au_beyond(results: Path) -> str:
    """AU at 8, 10 and 12 emulated accelerators, warm: the peers, and distributed_h5 with --feeder-prefetch 1."""
    from .au import AU_TARGET, read_csv

    runs = [(name, label) for name, label in (("au-beyond-default.csv", ""), ("au-beyond-prefetch.csv", ", prefetch 1"))
            if (results / name).exists()]
    if not runs:
        return "(no bench-results/au-beyond-*.csv: run `make bench-au`)"
    rows = [(row.loader + label, row) for name, label in runs for row in read_csv(str(results / name))]
    ranks = sorted({row.ranks for _, row in rows})
    lines = ["| loader | " + " | ".join(f"AU at {p}" for p in ranks) + f" | most ranks at AU ≥ {AU_TARGET:.2f} |",
             "| --- | " + " | ".join("---:" for _ in ranks) + " | ---: |"]
    for loader in dict.fromkeys(name for name, _ in rows):
        by_ranks = {row.ranks: row for name, row in rows if name == loader}
        kept = max([p for p, row in by_ranks.items() if row.au >= AU_TARGET], default=0)
        lines.append(f"| {loader} | " + " | ".join(f"{by_ranks[p].au:.3f}" if p in by_ranks else "" for p in ranks)
                     + f" | {kept} |")
    command = results / "au-beyond.command"
    return ("```\n" + command.read_text().strip() + "\n```\n\n" if command.exists() else "") + "\n".join(lines)


def au_commands(results: Path) -> str:
    return "\n".join((results / f"au-{cache}.command").read_text().strip() for cache in ("warm", "cold")
                     if (results / f"au-{cache}.command").exists())


def au_eviction(results: Path) -> str:
    """The cold run's check that eviction worked: a raw sequential read, warm and right after."""
    path = results / "au-cold.txt"
    found = [line for line in path.read_text().splitlines() if "after eviction" in line] if path.exists() else []
    return found[0] if found else "(no cold run)"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    results, out = Path(argv[0]), Path(argv[1])
    template = (Path(__file__).with_name("BENCHMARKS.md.in")).read_text()
    text = template.format(
        machine=machine(),
        io_table=io_table(results / "io.csv"),
        io_summary=io_summary(results / "io.csv"),
        scaling_table=scaling_table(results / "scaling.csv"),
        scaling_command=(results / "scaling.command").read_text().strip(),
        au_tables=au_tables(results),
        au_beyond=au_beyond(results),
        models_table=models_table(results),
        models_commands=models_commands(results),
        au_commands=au_commands(results),
        au_eviction=au_eviction(results),
        projections="\n\n".join(f"```\n{path.read_text().rstrip()}\n```" for path in sorted(results.glob("projection*.txt"))),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

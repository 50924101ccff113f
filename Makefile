# The two commands: `make demo` (train on 2 ranks) and `make test` (every test).
# Each installs whatever is missing first (scripts/install.sh is idempotent).
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)

.PHONY: install install-test test test-unit test-parallel demo bench bench-io bench-scaling bench-au bench-models bench-engines bench-device bench-codecs clean

install:
	bash scripts/install.sh

install-test:
	bash scripts/install.sh --test

# The unit and parallel tiers run TEST_WORKERS test files at a time (pytest-xdist; a file's
# fixtures are made once, on its worker), then the SLURM tier alone (one local cluster).
# Both parts run; either failing fails `make test`.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile
test: install-test
	status=0; \
	python -m pytest -ra --durations=25 $(XDIST) tests/unit tests/parallel || status=$$?; \
	python -m pytest -ra --durations=25 tests/slurm || status=$$?; \
	exit $$status

test-unit: install-test
	python -m pytest -ra $(XDIST) tests/unit

test-parallel: install-test
	python -m pytest -ra $(XDIST) tests/parallel

demo: install
	bash scripts/demo.sh

# Read throughput on every layout make-synthetic writes: 2000 clips of 16x3x64x64 uint8 each.
BENCH_LAYOUTS := contiguous:none:none clip:clip:none gzip:clip:gzip lzf:clip:lzf
bench-io: install
	mkdir -p data/bench bench-results
	for spec in $(BENCH_LAYOUTS); do IFS=: read name chunks compression <<< "$$spec"; \
	  test -f data/bench/$$name.h5 || distributed-h5 make-synthetic data/bench/$$name.h5 --samples 2000 \
	    --frames 16 --channels 3 --size 64 64 --chunks $$chunks --compression $$compression; done
	rm -f bench-results/io.csv
	distributed-h5 bench io data/bench/{contiguous,clip,gzip,lzf}.h5 --csv bench-results/io.csv | tee bench-results/io.txt

# Scaling at demo size (1 and 2 ranks) and its projection to 8, 64 and 512 ranks.
bench-scaling: install
	bash scripts/bench-scaling.sh

# Accelerator utilisation (MLPerf Storage's AU) of each loader at 1, 2, 4, 6 and 8 emulated accelerators,
# warm and cold: 8000 clips of 16x3x112x112 uint8 (4.8 GB; DH5_AU_CLIPS=N for fewer). About 8 minutes.
bench-au: install
	bash scripts/bench-au.sh

# R(2+1)D-18's step time at 16x3x112x112, float32 and mixed_bfloat16, 1 and 2 ranks. About 10 minutes.
bench-models: install
	bash scripts/bench-models.sh

# The Horovod and JAX engines side by side: train's samples/s on 1 and 2 CPU ranks. About 3 minutes.
bench-engines: install
	bash scripts/bench-engines.sh

# The GPU machine's benchmark (issue 23): train_model on the JAX engine, torchvision's R(2+1)D-18
# on a torch DataLoader, and bench au at the measured step; writes bench-results/device/device-bench.{json,md}.
# Where nvidia-smi sees a GPU about 7 minutes; elsewhere `--cpu`, the same code tiny (about a minute).
# On a lent machine without a registry: scripts/device-wheels.sh here, then carry .whl (README, Benchmarks).
bench-device: install
	bash scripts/device-bench.sh $(if $(shell nvidia-smi -L 2>/dev/null),,--cpu)

# Everything, then docs/BENCHMARKS.md from the results.
# The clip codecs on real frames (raw, jpeg q90, zstd): size, PSNR, decode rate, AU warm and cold. About 15 minutes.
bench-codecs: install
	bash scripts/bench-codecs.sh

bench: bench-io bench-scaling bench-au bench-models bench-engines bench-codecs
	mkdir -p docs
	cp bench-results/scaling.png docs/scaling.png
	cp bench-results/au.png docs/au.png
	python -m distributed_h5.bench.report bench-results docs/BENCHMARKS.md

clean:
	rm -rf data runs .pytest_cache .hypothesis

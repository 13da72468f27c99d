# One command each, on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup jars archive test lint unit demo bench chaos clean

setup: $(STAMP) jars archive

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,dev]'
	touch $(STAMP)

# Delta's and hadoop-aws's JVM jars into the local Maven repository (~/.m2), fetched
# once with `mvn dependency:get`; the Spark session then lists them in spark.jars.
jars: $(STAMP)
	$(PY) -m ometria_spark.jars fetch

# A class-data-sharing archive of the classes a sync loads (ometria_spark/jvm_archive.py):
# built once per machine by one small demo sync; local JVMs start faster with it.
archive: jars
	$(PY) -m ometria_spark.jvm_archive build

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: setup lint
	$(PY) -m pytest

demo: setup
	$(PY) -m ometria_spark.demo

BENCH_STAMP := $(VENV)/.installed-bench

# The benchmark-only extra (dlt, the peer; pyinstrument), kept out of `make test`.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[local,dev,bench]'
	touch $(BENCH_STAMP)

# Each script prints a table and appends it to bench/results.md.
bench: setup $(BENCH_STAMP)
	$(PY) bench/extract_rate.py --profiles 2500 --profiles 25000 --all-streams
	$(PY) bench/load_profiles.py
	$(PY) bench/small_run.py
	$(PY) bench/peer_dlt.py
	$(PY) bench/email_events.py --events 1000000
	$(PY) bench/history.py

# Randomised kills and API faults against the job, every table checked (not in `make test`);
# prints the figures and appends them to tests/reliability/chaos-results.md.
CHAOS_RUNS ?= 50
CHAOS_SEED ?= 1
chaos: setup
	$(PY) -m tests.reliability.chaos --runs $(CHAOS_RUNS) --seed $(CHAOS_SEED)

clean:
	rm -rf $(VENV) warehouse demo-data spark-warehouse metastore_db derby.log

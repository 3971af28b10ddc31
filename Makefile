# `make test` and `make demo` work from a fresh clone: they create .venv and
# install the project (with pinned dependencies) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# `make engines`: the local Beam engines the runner tests and the engine
# benchmark use, installed by their ordinary clients into $(ENGINES_DIR)
# (git-ignored): Prism built by `go install`, a GCS emulator
# (gcp-storage-emulator, pip, its own venv), Beam's Flink and Spark job
# server jars by Maven. Nothing is downloaded when a job runs. A jar that Maven cannot fetch is reported and skipped (its runner
# tests then skip naming `make engines`); a Go build that fails stops make.
ENGINES_DIR ?= .engines
BEAM_VERSION ?= 2.77.0
FLINK_VERSION ?= 1.20
GCS_EMULATOR_VERSION ?= 2026.7.19
ENGINES_BIN := $(abspath $(ENGINES_DIR))/bin
ENGINES_JARS := $(abspath $(ENGINES_DIR))/jars
BEAM_JARS := beam-runners-flink-$(FLINK_VERSION)-job-server beam-runners-spark-3-job-server

.PHONY: test test-slow demo install format clean engines

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-slow: $(STAMP)
	$(PY) -m pytest -q --run_slow tests

demo: $(STAMP)
	bash scripts/demo.sh

engines: $(ENGINES_BIN)/prism $(ENGINES_DIR)/gcs-emulator/.installed
	@mkdir -p $(ENGINES_JARS)
	@for jar in $(BEAM_JARS); do \
	  test -f $(ENGINES_JARS)/$$jar-$(BEAM_VERSION).jar && continue; \
	  mvn -B -q dependency:copy -Dartifact=org.apache.beam:$$jar:$(BEAM_VERSION) \
	    -DoutputDirectory=$(ENGINES_JARS) >$(ENGINES_JARS)/$$jar.log 2>&1 \
	  && echo "engines: $(ENGINES_JARS)/$$jar-$(BEAM_VERSION).jar" \
	  || echo "engines: Maven could not fetch org.apache.beam:$$jar:$(BEAM_VERSION) (see $(ENGINES_JARS)/$$jar.log); its runner tests will skip"; \
	done

$(ENGINES_BIN)/prism:
	GOBIN=$(ENGINES_BIN) nice -n 10 go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION)

# fake-gcs-server's batch endpoint drops google-cloud-storage's batch parts
# (they carry no Content-ID), so Beam's GCS rename/delete fail against it.
$(ENGINES_DIR)/gcs-emulator/.installed:
	$(PYTHON) -m venv $(ENGINES_DIR)/gcs-emulator
	$(ENGINES_DIR)/gcs-emulator/bin/pip install --quiet gcp-storage-emulator==$(GCS_EMULATOR_VERSION)
	touch $@

format: $(STAMP)
	$(PY) -m black pipelines model configs tests benchmarks setup.py

clean:
	rm -rf $(VENV) build *.egg-info demo_output

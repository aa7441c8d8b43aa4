# Two entry points for a fresh machine (Python 3.11, make, apt): `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEC := examples/digits/deploy.yaml

.PHONY: demo test lint install system-deps bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# checkov pins boto3, packaging and networkx below what deployc uses, so it lives in a tool venv of its own
# (tests/test_checkov.py finds it there).
CHECKOV := .venv-tools/checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .venv-tools/checkov
	.venv-tools/checkov/bin/python -m pip install --quiet checkov==3.3.30 \
	  || echo "note: could not install checkov; tests/test_checkov.py will skip"

# The kserve SDK (a real client of the binary tensor extension) pins psutil below what other test tools use.
KSERVE_SDK := .venv-tools/kserve/bin/python
$(KSERVE_SDK):
	$(PYTHON) -m venv .venv-tools/kserve
	.venv-tools/kserve/bin/python -m pip install --quiet 'kserve==0.21.*' \
	  || echo "note: could not install the kserve SDK; its client test will skip"

# Debian packages some tests use (promtool and the Prometheus server, wrk, headless chromium for report.html).
# Without root or apt the tests that need them skip and say why.
system-deps:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v wrk >/dev/null \
	  && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus wrk chromium >/dev/null) \
	    || echo "note: could not install prometheus/wrk/chromium; tests that need them will skip"; \
	else echo "note: not root or no apt-get: install Debian's prometheus, wrk and chromium for the full test suite"; fi

demo: install system-deps
	$(BIN)/python examples/digits/train.py
	$(BIN)/deployc validate $(SPEC)
	$(BIN)/deployc plan $(SPEC)
	$(BIN)/deployc build $(SPEC)
	@cat build/digits/report.md
	@echo
	@echo "Files in build/digits (manifest.json lists each with its sha256):"
	@cd build/digits && find . -type f | sort | sed 's|^\./|  |'
	@echo
	@for ex in nlp cv recsys; do \
	  echo; echo "== examples/$$ex: train, validate, build"; \
	  $(BIN)/python examples/$$ex/train.py && $(BIN)/deployc validate examples/$$ex/deploy.yaml \
	    && $(BIN)/deployc build -q examples/$$ex/deploy.yaml && sed -n '/^## Verification/,/^## Gates/p' build/$$ex/report.md \
	    | grep '^|' || exit 1; \
	done
	@echo
	@echo "The visual report (charts, attribution heatmaps, gates; one file, opens from disk):"
	@echo "  $(CURDIR)/build/digits/report.html"
	@echo
	@echo "Serve it:   $(BIN)/deployc serve build/digits"
	@echo "Query it:   curl -s localhost:8080/v2/models/digits/infer -H 'content-type: application/json' \\"
	@echo "              -d '{\"inputs\":[{\"name\":\"pixels\",\"shape\":[1,64],\"datatype\":\"FP32\",\"data\":[$$(python3 -c 'print(",".join(["0.5"]*64))')]}]}'"
	@echo "Explain it: the same body to localhost:8080/v2/models/digits/explain"

# ruff and mypy (configured in pyproject.toml); part of `make test`, so CI runs them
lint: install
	$(BIN)/ruff check deployc tests bench
	$(BIN)/mypy deployc

# Two pytest-xdist workers, one test file each at a time (module fixtures stay per file); session fixtures
# (the trained example, the step cache) are shared between the workers (tests/conftest.py).
TEST_WORKERS ?= 2
test: install system-deps $(CHECKOV) $(KSERVE_SDK) lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: install system-deps
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/optimize.py
	$(BIN)/python bench/tflite.py
	$(BIN)/python bench/examples.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/many.py

schema: install
	$(BIN)/python -m deployc.schema.jsonschema

clean:
	rm -rf build .pytest_cache

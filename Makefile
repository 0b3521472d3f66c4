# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
# Each creates .venv when missing and installs the project with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# On a machine without an NVIDIA GPU, install the CPU wheel of torch first so that
# `torch>=2.8` in pyproject.toml is already satisfied and no CUDA build is pulled.
TORCH_CPU := torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: install test demo bench clean r checkpoint constraints

# R with MASS, geepack and glmmTMB for the live parity tests (glm.nb, geeglm, glmmTMB) (Debian/Ubuntu, as root): `make r`.
r:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq r-base-core r-cran-mass r-cran-geepack r-cran-glmmtmb

install: $(STAMP)

# panoptica (the reference for the `panoptica` preset's parity test) pins numpy<2.3, pandas<3 and
# cc3d<4; installing it with its pins would downgrade the core stack, so it goes in without them,
# with the dependencies it actually imports.
# pip is quiet unless something fails: -qq hides pip's warnings (e.g. "Location ... is ignored" from a
# find-links setting of the machine), --no-warn-conflicts the red resolver "ERROR" that the deliberate
# --no-deps install of panoptica triggers although nothing failed; real errors still print and stop make.
PIP := $(PY) -m pip install -qq --disable-pip-version-check --no-warn-conflicts

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) $(TORCH_CPU); fi
	$(PIP) -e '.[forecast,dask,bids,dev]'
	$(PIP) --no-deps panoptica==2.1.7
	$(PIP) scikit-image 'plotly<6' ruamel.yaml tqdm
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

demo: $(STAMP)
	$(VENV)/bin/mseval demo --out $(DEMO_OUT)

# Rebuild both shipped checkpoints from scratch: first the decoder forecast/checkpoints/tiny_centre (forecast/release.py:
# simulate 2,400 + 240 patients, data cache, count head and location network, 1,500 training steps, sample the
# validation trial at guidance 1 and choose the mask threshold), then the image forecaster forecast/checkpoints/image_count
# (forecast/image_release.py: its own 600-patient trial, N4 + WhiteStripe, 40 epochs, the decoder's threshold chosen on
# the same validation trial). Measured end to end on a fresh clone, 2 CPU cores, quiet: 64 min 12 s (decoder 34.8 min,
# image forecaster 29.4 min; peak memory 2.4 GB), 2026-12-08, bench/RESULTS_forecast.md r19. The issue's goal: 90 min.
checkpoint: $(STAMP)
	$(PY) -m forecast.release --work build/checkpoint
	$(PY) -m forecast.image_release --work build/checkpoint

# Rewrite constraints/ci.txt (the versions CI installs) from the current .venv, after a deliberate upgrade and a green
# `make test`; torch, its CUDA parts and tools installed by hand stay out.
constraints: $(STAMP)
	{ sed -n '1,3p' constraints/ci.txt; $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|torchvision|triton|pyflakes)==|^(nvidia-|cuda-)' | grep -v '^#'; } > constraints/ci.txt.new
	mv constraints/ci.txt.new constraints/ci.txt

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info

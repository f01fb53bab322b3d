# The README's two commands: `make demo` (the whole chain on generated data) and `make test`; also
# `make lint`, `make format`, `make bench` (the Performance benchmarks) and `make clean-demo`.
# Each creates .venv and installs requirements.txt on first use (the stamp makes a second run a no-op).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean-demo

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The four benchmarks of the README's Performance section, with their defaults; each prints its table.
# They run on the CPU (train_speed and predict also time the GPU when CUDA is present) and take minutes
# to tens of minutes each; outputs go to bench/out/ (git-ignored). tiling and rescale compare with
# Debian's gdal_translate/gdalwarp (apt-get install gdal-bin) and stop with one line without them, so
# they run last. bench/seasons.py is not here: it compares the models of the input modes (three
# trainings), not speed.
bench: $(STAMP)
	$(PY) bench/train_speed.py
	$(PY) bench/predict.py
	$(PY) bench/tiling.py
	$(PY) bench/rescale.py

# What `make demo` writes (demo.py, default --root; for any of its --modes): under data/ the generated
# scenes (data/raw) and what the pipeline makes of them, runs/demo-<mode>, results/demo-<mode>, then the
# folders left empty. The README's walk-through of the real data writes under data/ with the same
# names: data/ is only touched when data/raw/, the demo's generated scenes, is there.
DEMO_MODES := april august stacked
DEMO_DATA := raw mask_10m.tif tiles split.csv band_stats.json train val test august stacked
DEMO_DATA += mask_10m.tif.partial split.csv.partial band_stats.json.partial

clean-demo:
	if [ -d data/raw ]; then cd data && rm -rf $(DEMO_DATA); fi
	rm -rf $(DEMO_MODES:%=runs/demo-%) $(DEMO_MODES:%=results/demo-%)
	rmdir data runs results 2>/dev/null || true

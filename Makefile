# Two entry points that work on a fresh machine:
#   make demo   create a venv, install, generate demo photos, index them, run searches
#   make test   create a venv, install, run the test suite
# torch is pinned here (not in pyproject.toml) so this machine's CPU wheel is used;
# override with e.g. `make test TORCH=torch` to take PyPI's default build.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_DIR ?= demo-library
DEMO_DB ?= demo-index.db
TINY_MODEL := models/tiny-clip

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/python scripts/make_demo_library.py $(DEMO_DIR)
	$(BIN)/clipsearch index $(DEMO_DIR) --db $(DEMO_DB) --model $(TINY_MODEL)
	@echo; echo '$$ clipsearch find "a red circle" --top 5'
	@$(BIN)/clipsearch find "a red circle" --db $(DEMO_DB) --top 5
	@echo; echo '$$ clipsearch find "a star" + "yellow" --top 5'
	@$(BIN)/clipsearch find "a star" + "yellow" --db $(DEMO_DB) --top 5
	@echo; echo '$$ clipsearch find "a blue square" - "blue" + "green" --top 5'
	@$(BIN)/clipsearch find "a blue square" - "blue" + "green" --db $(DEMO_DB) --top 5
	@echo; echo '$$ clipsearch similar $(DEMO_DIR)/0000-*.jpg --top 5'
	@$(BIN)/clipsearch similar $(DEMO_DIR)/0000-*.jpg --db $(DEMO_DB) --top 5
	@echo; echo '$$ clipsearch find "a purple triangle" --top 3 --json'
	@$(BIN)/clipsearch find "a purple triangle" --db $(DEMO_DB) --top 3 --json
	@echo; echo '$$ clipsearch dedupe --in $(DEMO_DIR)/imported'
	@$(BIN)/clipsearch dedupe --db $(DEMO_DB) --in $(DEMO_DIR)/imported
	@echo; echo '$$ clipsearch tag --vocab $(DEMO_DIR)-vocabulary.txt && clipsearch find --tag red --tag star --top 3'
	@$(BIN)/clipsearch tag --db $(DEMO_DB) --vocab $(DEMO_DIR)-vocabulary.txt
	@$(BIN)/clipsearch find --tag red --tag star --db $(DEMO_DB) --top 3
	@echo; echo '$$ clipsearch ocr $(DEMO_DIR)/travels && clipsearch find --text parking'
	@$(BIN)/clipsearch ocr $(DEMO_DIR)/travels --db $(DEMO_DB)
	@$(BIN)/clipsearch find --text parking --db $(DEMO_DB)
	@echo; echo '$$ clipsearch find "a red circle" --place portugal --top 3'
	@$(BIN)/clipsearch find "a red circle" --place portugal --db $(DEMO_DB) --top 3

test: install
	$(BIN)/ruff check . && $(BIN)/mypy && $(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench_index.py
	$(BIN)/python scripts/bench_search.py
	$(BIN)/python scripts/bench_dedupe.py

clean:
	rm -rf $(DEMO_DIR) $(DEMO_DIR)-vocabulary.txt $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm $(DEMO_DB).* \
		.pytest_cache

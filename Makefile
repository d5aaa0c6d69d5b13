# The README's two commands: `make run` (the whole flow on this machine) and `make test`.

run: setup
	.venv/bin/python scripts/demo.py

serve: setup
	.venv/bin/dicom-node serve

test: setup
	scripts/check
	.venv/bin/python -m pytest

setup:
	scripts/setup

.PHONY: run serve test setup

run: setup
	.venv/bin/dicom-node serve

test: setup
	scripts/check
	.venv/bin/python -m pytest

setup:
	scripts/setup

.PHONY: run test setup

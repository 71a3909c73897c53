.PHONY: test
test:
	.venv/bin/pytest

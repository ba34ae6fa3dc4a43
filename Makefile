# Common tasks. `make` (or `make help`) lists them.
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help run test build release fmt lint openapi bench docker clean

help: ## List the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  make %-9s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run: ## Run the server (release build): cargo run --release -- serve
	$(CARGO) run --release -- serve

test: ## Run the whole test suite (SQLite + folder, then PostgreSQL + S3): ./scripts/test.sh
	./scripts/test.sh

build: ## Debug build
	$(CARGO) build

release: ## Release build (target/release/updraft)
	$(CARGO) build --release --locked

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Clippy on all targets, warnings are errors
	$(CARGO) clippy --all-targets -- -D warnings

openapi: ## Regenerate docs/openapi.json
	$(CARGO) run --quiet -- openapi > docs/openapi.json.tmp || { rm -f docs/openapi.json.tmp; exit 1; }
	mv docs/openapi.json.tmp docs/openapi.json

bench: ## Run the benchmarks: ./bench/run.sh
	./bench/run.sh

docker: ## Build the container image updraft (docker/Dockerfile)
	docker build -f docker/Dockerfile -t updraft .

clean: ## Remove build output
	$(CARGO) clean

# legate: two commands do everything on a fresh machine.
#   make run    start legate on config/default.yaml
#   make test   build and run every test (unit, integration, CLI)
#   make bench  micro-benchmarks and the load benchmark (installs wrk and nginx when missing)
#   make pgo    a profile-guided build, target/pgo/release/legate (what make bench measures)

CARGO ?= cargo
CONFIG ?= config/default.yaml

.PHONY: run test lint bench build release pgo

build:
	$(CARGO) build

release:
	$(CARGO) build --release

run: release
	@echo "legate is starting on $(CONFIG): try  curl http://127.0.0.1:10000/  (admin: http://127.0.0.1:9901/help)"
	./target/release/legate -c $(CONFIG)

test:
	$(CARGO) build --all-targets
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

bench:
	bash benches/load.sh

pgo:
	PGO_ONLY=1 bash benches/load.sh

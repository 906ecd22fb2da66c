# gridos: the two front-door commands are `make run` and `make test` (see README.md).

CARGO      ?= cargo
BUILD      ?= $(CURDIR)/build
REGISTRY_DB     ?= sqlite://$(BUILD)/registry.db
REGISTRY_LISTEN ?= 127.0.0.1:8480
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
# Every initramfs entry gets this mtime: the last commit's time, so a commit always gives the same image.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH

.PHONY: all build run test test-unit test-boot-init test-image lint fmt bench clean init image

all: build

build:
	$(CARGO) build --release --workspace

## Start a registry on an embedded SQLite file and print how to talk to it.
run:
	$(CARGO) build --release -p grid-registry -p grid-cli
	@mkdir -p $(BUILD)
	@echo "== grid registry on http://$(REGISTRY_LISTEN) with $(REGISTRY_DB)"
	@echo "== in another terminal, for example:"
	@echo "     target/release/grid --registry http://$(REGISTRY_LISTEN) key new"
	@echo "     target/release/grid --registry http://$(REGISTRY_LISTEN) twin register"
	@echo "     target/release/grid --registry http://$(REGISTRY_LISTEN) farm create my-farm"
	@echo "     target/release/grid --registry http://$(REGISTRY_LISTEN) nodes list"
	@echo "     target/release/grid --registry http://$(REGISTRY_LISTEN) stats"
	@echo "     curl http://$(REGISTRY_LISTEN)/api/v1/stats"
	@echo "== Ctrl-C stops it"
	exec target/release/grid-registry serve --db $(REGISTRY_DB) --listen $(REGISTRY_LISTEN)

## Every test: formatting, lints, unit and integration tests on SQLite and a real PostgreSQL,
## and PID 1 booted in QEMU with Debian's kernel.
test: lint test-unit test-boot-init test-image

test-unit:
	tests/with-postgres.sh $(CARGO) test --workspace

test-boot-init:
	bash tests/boot-init/run.sh

## The image built twice (same bytes) and booted in QEMU to "all services started" and poweroff.
test-image:
	bash tests/image/run.sh

## The static gridos binaries (init, gridctl, agent, network, storage), as they go into the initramfs.
init:
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build \
		--profile initramfs --target x86_64-unknown-linux-gnu -p gridos-init -p gridctl -p gridos-agent -p gridos-network -p gridos-storage

## out/vmlinuz, out/initramfs.img, out/cmdline, out/build.json from image/profile.yaml.
## GRIDOS_KERNEL_ROOT=DIR uses an extracted kernel tree instead of Debian's package.
image: init
	$(CARGO) build -q -p gridos-imager
	$(TARGET_DIR)/debug/gridos-imager build --profile image/profile.yaml --out out \
		--bin-dir $(TARGET_DIR)/x86_64-unknown-linux-gnu/initramfs --cache $(BUILD)/image-cache

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks behind BENCHMARKS.md.
bench:
	$(CARGO) build --release -p grid-registry -p gridos-perf
	@mkdir -p $(BUILD)
	tests/with-postgres.sh target/release/gridos-perf --out $(BUILD)/bench.json all

clean:
	$(CARGO) clean
	rm -rf $(BUILD) out

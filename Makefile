# gridos: the two front-door commands are `make run` and `make test` (see README.md).

CARGO      ?= cargo
BUILD      ?= $(CURDIR)/build
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
# Every initramfs entry gets this mtime: the last commit's time, so a commit always gives the
# same image. Given only to the imager: exported to cargo it would change build-script inputs
# and rebuild ring and libsqlite3-sys on every make call.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
# One `SKIPPED` line per test skipped on purpose (GRIDOS_TEST_SKIP, docs/testing.md); printed
# after the unit tests and at the end of `make test`.
SKIP_LOG   ?= $(abspath $(BUILD))/skips.txt
# The release key: what signs system extensions (the VM runtime) and what images trust. A
# development key is made here on first use; a release build points this at the real one.
RELEASE_KEY ?= $(BUILD)/release.key
# Where `make init` gathers the executables the image takes (the imager's --bin-dir).
IMAGE_BIN  ?= $(TARGET_DIR)/image-bin

.PHONY: deps-image deps-run deps-test test-packages all build run test test-unit test-boot-init test-image test-e2e lint fmt fuzz bench boot-bench node-bench libcontainer-bench baseline-image clean init image pxe usb iso deps-media media-bench ledger-bench vm-bench extensions

all: build

build:
	$(CARGO) build --release --workspace

## The main job: build the image, start a registry on 127.0.0.1:8480 (SQLite in build/run),
## create a farm, boot one node in QEMU against it; the console streams here and the node list
## is printed once the node registers. Ctrl-C shuts the node down in order.
## RUN_ARGS="--port 8481 --report-interval 10" passes flags (gridos-lab run --help).
run: deps-run image extensions
	$(CARGO) build --release -p registry -p cli -p lab
	$(TARGET_DIR)/release/gridos-lab run --image out --work $(BUILD)/run --bin-dir $(TARGET_DIR)/release $(RUN_ARGS)

## Every test: formatting, lints, unit and integration tests on SQLite and a real PostgreSQL,
## PID 1 booted in QEMU with Debian's kernel, the image test and the end-to-end test.
test: deps-test test-packages lint test-unit test-boot-init test-image test-e2e
	@tests/skip-summary.sh $(SKIP_LOG)

## The Debian packages each job needs (tools/packages.txt): installed when missing as root,
## otherwise named with the exact `sudo apt-get install` line.
deps-image:
	@tools/need-packages.sh image
deps-run:
	@tools/need-packages.sh image run
deps-test:
	@tools/need-packages.sh image media run test
deps-media:
	@tools/need-packages.sh image media

## The package check itself, against a fake dpkg-query/apt-get.
test-packages:
	bash tests/packages/run.sh

## A test whose requirement (root, a program, PostgreSQL) is missing fails, unless
## GRIDOS_TEST_SKIP names it (e.g. GRIDOS_TEST_SKIP=root as a user): then it is listed here.
test-unit:
	@mkdir -p $(dir $(SKIP_LOG)) && rm -f $(SKIP_LOG)
	GRIDOS_SKIP_LOG=$(SKIP_LOG) tests/with-postgres.sh $(CARGO) test --workspace; \
		status=$$?; tests/skip-summary.sh $(SKIP_LOG); exit $$status

test-boot-init:
	bash tests/boot-init/run.sh

## The image built twice (same bytes) and booted in QEMU to "all services started" and poweroff.
test-image:
	bash tests/image/run.sh

## A node in QEMU registers, reboots as the same node, and loses no report during an outage.
test-e2e:
	bash tests/e2e/run.sh

## The static node executables as they go into the initramfs, gathered in $(IMAGE_BIN):
## `init` (PID 1, profile initramfs) and the multi-call `gridos` (gridctl, agent, network,
## provision, storage, entropy; crates/node; profile services, where a panic aborts the service).
init:
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build \
		--profile initramfs --target x86_64-unknown-linux-gnu -p init
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build \
		--profile services --target x86_64-unknown-linux-gnu -p node
	@mkdir -p $(IMAGE_BIN)
	cp -f $(TARGET_DIR)/x86_64-unknown-linux-gnu/initramfs/init \
		$(TARGET_DIR)/x86_64-unknown-linux-gnu/services/gridos $(IMAGE_BIN)/

## out/vmlinuz, out/initramfs.img, out/cmdline, out/build.json from image/profile.yaml.
## GRIDOS_KERNEL_ROOT=DIR uses an extracted kernel tree instead of Debian's package.
image: deps-image init
	$(CARGO) build -q -p imager
	@$(TARGET_DIR)/debug/gridos-imager release-key --new-key --key $(RELEASE_KEY) >/dev/null
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(TARGET_DIR)/debug/gridos-imager build --profile image/profile.yaml --out out \
		--bin-dir $(IMAGE_BIN) --cache $(BUILD)/image-cache \
		--release-pub $$($(TARGET_DIR)/debug/gridos-imager release-key --key $(RELEASE_KEY))

## The VM runtime (docs/vms.md): QEMU and what it loads as a squashfs in out/extensions,
## signed with $(RELEASE_KEY); `make run` serves it to the node from the registry.
extensions: deps-image deps-run
	$(CARGO) build -q -p imager
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(TARGET_DIR)/debug/gridos-imager extension --new-key \
		--key $(RELEASE_KEY) --profile image/extensions/vm.yaml --out out/extensions

## The network-boot folder for the local `make run` farm (docs/boot-media.md): the image with
## the farm and registry baked in, boot.ipxe and a dnsmasq recipe, in $(BUILD)/pxe.
PXE_FARM     ?= 1
PXE_REGISTRY ?= http://10.0.2.2:8480
pxe: deps-image init
	$(CARGO) build -q -p cli
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(TARGET_DIR)/debug/grid --registry $(PXE_REGISTRY) image build \
		--farm $(PXE_FARM) --format pxe -o $(BUILD)/pxe --bin-dir $(IMAGE_BIN) --cache $(BUILD)/image-cache

## A USB stick image (UEFI and BIOS) and a hybrid ISO for the same farm (docs/boot-media.md):
## build/node.img, build/node.iso.
usb iso: deps-media init
	$(CARGO) build -q -p cli
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(TARGET_DIR)/debug/grid --registry $(PXE_REGISTRY) image build \
		--farm $(PXE_FARM) --format $@ -o $(BUILD)/node.$(if $(filter usb,$@),img,iso) --bin-dir $(IMAGE_BIN) --cache $(BUILD)/image-cache

## Every parser of outside input (kernel command line, service files, uevents, DHCP replies,
## envelopes and payloads, deployments, module index files, registry queries, the
## provision service's socket lines) fed
## FUZZ_CASES arbitrary and mutated inputs per property (crates/fuzz; results in
## BENCHMARKS.md). A failure prints its shrunk input.
FUZZ_CASES ?= 1000000
fuzz:
	FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --profile fuzz -p fuzz --no-fail-fast -- --test-threads=2

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Boot media: build time and size per format, the registry's cached and uncached
## /boot/{farm}/usb.img (BENCHMARKS.md).
media-bench: deps-media init
	$(CARGO) build -q -p cli -p registry
	bash bench/media/run.sh

## The minimal PID 1 (mounts, DHCP, one POST) that boot-bench compares gridos against.
baseline-image:
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build \
		--profile initramfs --target x86_64-unknown-linux-gnu -p baseline
	$(CARGO) build -q -p imager
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(TARGET_DIR)/debug/gridos-imager build --profile bench/baseline/profile.yaml --out $(BUILD)/baseline-image \
		--bin-dir $(TARGET_DIR)/x86_64-unknown-linux-gnu/initramfs --cache $(BUILD)/image-cache

## Guest-clock time from PID 1 to "registered": gridos against the baseline init (BENCHMARKS.md).
boot-bench: image baseline-image
	$(CARGO) build --release -p registry -p cli -p lab
	$(TARGET_DIR)/release/gridos-lab boot-bench --image out --baseline $(BUILD)/baseline-image \
		--work $(BUILD)/boot-bench --bin-dir $(TARGET_DIR)/release --out $(BUILD)/boot-bench.json

## Container create → first instruction, gridos' runtime against crun, inside a booted node,
## and the agent's RSS with 20 containers running (BENCHMARKS.md). The benchmark image is the
## real one plus crun and gridos-startbench (bench/start/profile.yaml).
node-bench: image libcontainer-bench
	@tools/need-packages.sh bench
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build \
		--profile services --target x86_64-unknown-linux-gnu -p startbench
	cp -f $(TARGET_DIR)/x86_64-unknown-linux-gnu/services/gridos-startbench $(IMAGE_BIN)/
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(TARGET_DIR)/debug/gridos-imager build --profile bench/start/profile.yaml \
		--out $(BUILD)/start-bench-image --bin-dir $(IMAGE_BIN) --cache $(BUILD)/image-cache
	$(CARGO) build --release -p registry -p cli -p lab
	$(TARGET_DIR)/release/gridos-lab node-bench --image $(BUILD)/start-bench-image --work $(BUILD)/node-bench \
		--bin-dir $(TARGET_DIR)/release --out $(BUILD)/node-bench.json

## youki's libcontainer linked into a static program as a node would link it (outside the
## workspace, bench/libcontainer): its size, and its starts in node-bench.
libcontainer-bench:
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build --release \
		--manifest-path bench/libcontainer/Cargo.toml --target x86_64-unknown-linux-gnu \
		--target-dir $(TARGET_DIR)/libcontainer-bench
	@mkdir -p $(IMAGE_BIN)
	cp -f $(TARGET_DIR)/libcontainer-bench/x86_64-unknown-linux-gnu/release/gridos-youki-start $(IMAGE_BIN)/
	@ls -l $(IMAGE_BIN)/gridos-youki-start

## Benchmarks behind BENCHMARKS.md.
bench:
	$(CARGO) build --release -p registry -p perf
	@mkdir -p $(BUILD)
	tests/with-postgres.sh target/release/gridos-perf --out $(BUILD)/bench.json all

## Issue 14's benchmarks: period closing, grid audit, web page time to first byte.
ledger-bench:
	@tools/need-packages.sh test
	$(CARGO) build --release -p registry -p perf -p cli
	bench/ledger/run.sh

## Issue 15's benchmarks: VM start through the driver against bare QEMU; the VM-runtime
## extension's size and its download+verify+mount time (root: loop devices).
vm-bench:
	@tools/need-packages.sh image run
	$(CARGO) build --release -p perf
	@mkdir -p $(BUILD)
	target/release/gridos-perf --out $(BUILD)/vm-start.json vm-start --runs 8
	target/release/gridos-perf --out $(BUILD)/extension-fetch.json extension-fetch --runs 5

clean:
	$(CARGO) clean
	rm -rf $(BUILD) out

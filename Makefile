# gridos top-level targets. `make test` is what CI runs.
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: test test-unit test-boot-init init

test: test-unit test-boot-init

test-unit:
	$(CARGO) test --workspace

# PID 1 (issue 4): static init + gridctl, booted in QEMU with Debian's kernel.
test-boot-init:
	bash tests/boot-init/run.sh

# The static init and gridctl, as they go into the initramfs.
init:
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build \
		--profile initramfs --target x86_64-unknown-linux-gnu -p gridos-init -p gridctl

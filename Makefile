# kube-nftproxy — build, test, demo.
# `make test` and `make demo` run as root (network namespaces, nftables) and first install the
# Debian packages they need when missing.

SHELL      := /bin/bash
CARGO      ?= cargo
JOBS       ?= 2
CARGOFLAGS ?= -j$(JOBS)
# Debian packages the kernel tests and the demo use, and a command each provides.
DEB_PKGS   := nftables:nft iptables:iptables-legacy conntrack:conntrack iproute2:ip procps:sysctl tcpdump:tcpdump

.PHONY: all build test unit-test kernel-test demo deps check-root clean

all: build

build:
	$(CARGO) build $(CARGOFLAGS) --workspace --all-targets

## deps: install the Debian packages the tests need (only those missing).
deps:
	@missing=""; for pc in $(DEB_PKGS); do p=$${pc%%:*}; c=$${pc##*:}; \
	  command -v $$c >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

check-root:
	@[ "$$(id -u)" = 0 ] || { echo "make test needs root (network namespaces, nftables)"; exit 1; }

## test: unit tests and kernel tests (in throwaway network namespaces).
# The last line is the plain total over every test binary ("N passed, N failed").
test: check-root deps
	@mkdir -p target; set -o pipefail; $(CARGO) test $(CARGOFLAGS) --workspace --lib --bins --tests --no-fail-fast 2>&1 \
	  | tee target/test.log; rc=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log; \
	exit $$rc

unit-test:
	$(CARGO) test $(CARGOFLAGS) --workspace --exclude nftproxy-integration

kernel-test: check-root deps
	$(CARGO) test $(CARGOFLAGS) -p nftproxy-integration

## demo: the main job on the built-in example manifests: program a throwaway node namespace
## over netlink and send traffic through it.
demo: check-root deps build
	./target/debug/demo target/debug/kube-nftproxy examples/demo.yaml

clean:
	$(CARGO) clean

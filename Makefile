# kube-nftproxy — build, test, demo.
# `make test` and `make demo` run as root (network namespaces, nftables) and first install the
# Debian packages they need when missing.

SHELL      := /bin/bash
CARGO      ?= cargo
JOBS       ?= 2
CARGOFLAGS ?= -j$(JOBS)
# No incremental compilation caches by default: CI builds once from a clean clone, and the caches
# are a third of a clean test build's disk (0.76 of 2.4 GiB). `CARGO_INCREMENTAL=1 make test` for
# repeated local runs.
export CARGO_INCREMENTAL ?= 0
# The tests that need root are marked in their crates' Cargo.toml (`required-features =
# ["root-tests"]`): `make test` and the long suites turn them on, `make unit-test` runs without.
ROOT_TESTS := --features kube-nftproxy/root-tests,nftproxy-integration/root-tests,nftproxy-iptables/root-tests
# Debian packages the kernel tests and the demo use: nft (oracle in tests), iptables-legacy,
# conntrack, ip, sysctl; libclang-dev for the rustables test reader (bindgen); curl and openssl
# for the end-to-end tests against kube-apiserver (API calls, service-account key).
DEB_PKGS   := nftables iptables conntrack iproute2 procps libclang-dev curl openssl ca-certificates

.PHONY: all build test unit-test kernel-test difftest faults soak cluster fuzz demo bench bench-quick deps peers check-root clean

all: build

build:
	$(CARGO) build $(CARGOFLAGS) --workspace --all-targets

## deps: install the Debian packages the tests need (only those missing).
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## peers: kube-apiserver, kube-proxy and etcd built from the Go module proxy (pinned versions)
## into /var/cache/kube-nftproxy/peers, once; later runs reuse them.
peers:
	@bash integration/peers/build-peers.sh >/dev/null

check-root:
	@[ "$$(id -u)" = 0 ] || { echo "make test needs root (network namespaces, nftables)"; exit 1; }

## test: unit tests and kernel tests (in throwaway network namespaces).
# The last line is the plain total over every test binary ("N passed, N failed").
test: check-root deps peers
	@mkdir -p target; set -o pipefail; KNP_PEERS_BIN=$$(bash integration/peers/build-peers.sh) $(CARGO) test $(CARGOFLAGS) --workspace $(ROOT_TESTS) --lib --bins --tests --no-fail-fast 2>&1 \
	  | tee target/test.log; rc=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log; \
	exit $$rc

## difftest: the real kube-proxy v1.34.4 against kube-nftproxy on seeded random clusters, both
## modes (make test runs one small seed). KNP_DIFFTEST_SEEDS=1-20 and KNP_DIFFTEST_SERVICES=150
## by default here.
difftest: check-root deps peers
	KNP_PEERS_BIN=$$(bash integration/peers/build-peers.sh) KNP_DIFFTEST_SEEDS=$${KNP_DIFFTEST_SEEDS:-1-20} \
	  KNP_DIFFTEST_SERVICES=$${KNP_DIFFTEST_SERVICES:-150} \
	  $(CARGO) test $(CARGOFLAGS) --release -p kube-nftproxy --features root-tests --test difftest -- --nocapture

## faults: the fault suite in full (make test runs a bounded version): SIGKILL at eleven points
## of a 50k-element cold start and during six restarts under a held TCP connection, a refused
## transaction, ten API server/etcd outages during churn, foreign edits during 60 rounds of churn.
faults: check-root deps peers
	KNP_PEERS_BIN=$$(bash integration/peers/build-peers.sh) KNP_FAULTS_FULL=1 \
	  $(CARGO) test $(CARGOFLAGS) --release -p kube-nftproxy --features root-tests --test faults faults_ -- --nocapture --test-threads 1

## soak: ten minutes (KNP_SOAK_SECS) of Service and endpoint churn through the API server under
## TCP and UDP traffic; memory, latency and leaks checked (make test runs 20 s of it).
soak: check-root deps peers
	KNP_PEERS_BIN=$$(bash integration/peers/build-peers.sh) KNP_SOAK_SECS=$${KNP_SOAK_SECS:-600} \
	  $(CARGO) test $(CARGOFLAGS) --release -p kube-nftproxy --features root-tests --test faults soak_ -- --nocapture

## cluster: KNP_CLUSTER_NODES nodes (20) in namespaces, one kube-nftproxy each, against the real
## kube-apiserver: network-programming latency across the cluster (with --iptables-min-sync-period
## 0s and with the default 1s), a node joining KNP_CLUSTER_SERVICES Services (10,000) under
## traffic, each daemon's RSS and CPU; report in target/cluster-report.md (make test runs N = 3).
cluster: check-root deps peers
	KNP_PEERS_BIN=$$(bash integration/peers/build-peers.sh) \
	  $(CARGO) test $(CARGOFLAGS) --release -p kube-nftproxy --features root-tests --test cluster cluster_scale_scenario -- --ignored --nocapture

## fuzz: every property test (prop_*) with KNP_FUZZ_CASES cases (10^6 by default) in release;
## make test runs them with small case counts.
fuzz: check-root deps
	KNP_FUZZ_CASES=$${KNP_FUZZ_CASES:-1000000} $(CARGO) test $(CARGOFLAGS) --release -p nftproxy-nft-wire -p nftproxy-nftables -p nftproxy-manifest -p nftproxy-model -p nftproxy-iptables --features nftproxy-iptables/root-tests --lib --tests prop_ -- --nocapture

## unit-test: every test that runs without root (any user): unit, golden, byte-exact, property.
unit-test:
	$(CARGO) test $(CARGOFLAGS) --workspace

kernel-test: check-root deps
	$(CARGO) test $(CARGOFLAGS) -p nftproxy-integration --features root-tests

## demo: the main job on the built-in example manifests: program a throwaway node namespace
## over netlink and send traffic through it.
demo: check-root deps build
	./target/debug/demo target/debug/kube-nftproxy examples/demo.yaml

## bench: the standard benchmark suite (control plane 1k/10k/50k services x 1/3/10 endpoints
## and ours alone at 5k x 50; data plane 0/1k/10k/30k services, each beside an empty twin lab; the head to head with the real kube-proxy at 1k and 10k
## services x 3 endpoints, and our daemon alone for the memory table, fed by the API server and
## standalone, at 5k x 50, 50k x 3 and 50k x 10. About 100 minutes on 2 cores, ~22 of them
## kube-apiserver creating the 50k Services: its ClusterIP allocator lists every IPAddress twice
## per create (ipallocator.Used, 88% of its CPU in a profile), ~30 Services/s past 20k; 50k x 10
## reuses those Services and replaces their slices. Stopped with Ctrl-C or SIGTERM, it removes its
## processes and namespaces. Tables on stdout, CSV and SVG in bench-out/;
## tools/update-readme-perf.py then puts that run into the README.
bench: check-root deps peers
	$(CARGO) build $(CARGOFLAGS) --release -p nftproxy-integration --bin nftproxy-bench -p kube-nftproxy --bin kube-nftproxy
	KNP_PEERS_BIN=$$(bash integration/peers/build-peers.sh) ./target/release/nftproxy-bench --out bench-out --deadline 60 \
	  --ours 5000x50 --real 1000x3,10000x3 --real-ours 5000x50,50000x3,50000x10

## bench-quick: a few minutes: 1k/10k services x 3 endpoints, data plane 0/1k.
bench-quick: check-root deps
	$(CARGO) build $(CARGOFLAGS) --release -p nftproxy-integration --bin nftproxy-bench
	./target/release/nftproxy-bench --quick --out bench-out

clean:
	$(CARGO) clean

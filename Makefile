# udpmapsync — replicate BPF maps between nodes over UDP multicast.
# `make help` lists the targets. Tests and the demo need root (BPF, namespaces).

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN     := bin/udpmapsync
LDFLAGS := -X main.version=$(VERSION)

# Debian packages the tests, demo and generate need at run time.
RUNTIME_PKGS  := bpftool nftables iproute2 util-linux
GENERATE_PKGS := clang llvm libbpf-dev

export PATH := $(PATH):/usr/local/go/bin

.PHONY: build
build: ## Build the daemon into bin/udpmapsync (default)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/udpmapsync

.PHONY: deps
deps: ## Install the Debian packages tests and demo need (root; apt)
	@missing=""; for p in $(RUNTIME_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

.PHONY: generate
generate: ## Regenerate the BPF objects with bpf2go (needs clang; installs it)
	@missing=""; for p in $(GENERATE_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(GO) generate ./...

.PHONY: test
test: deps ## Run every test against the real kernel, then the fentry ones in a VM (root)
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 15m ./...
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./... >/dev/null
	$(MAKE) --no-print-directory vmtest

.PHONY: vmtest
vmtest: VMRUN := $(CURDIR)/bin/vmrun
vmtest: VMDAEMON := $(CURDIR)/bin/udpmapsync-vm
vmtest: ## Prove the fentry capture path in a Debian 6.1 VM (qemu TCG, a few minutes; root; downloads the kernel once)
	$(GO) build -o bin/vmrun ./vmtest/cmd/vmrun
	CGO_ENABLED=0 $(GO) build -o $(VMDAEMON) ./cmd/udpmapsync
	@echo "vmtest: checking the VM (kernel with BTF, fentry, veth, bridge)"
	@CGO_ENABLED=0 $(GO) test -count=1 -timeout 5m -exec "$(VMRUN)" ./vmtest/probe || { \
		echo "vmtest: CANNOT RUN: the test VM does not boot or lacks what the tests need (see above;" >&2; \
		echo "vmtest: it needs root, qemu-system-x86 and the Debian kernel package, installed on first use)." >&2; \
		echo "vmtest: the fentry capture path was NOT tested." >&2; exit 1; }
	CGO_ENABLED=0 $(GO) test -count=1 -timeout 10m -run 'Capture' -exec "$(VMRUN)" ./loader
	CGO_ENABLED=0 $(GO) test -count=1 -timeout 10m -short -run '^TestConverge$$' \
		-exec "$(VMRUN) --file $(VMDAEMON) --env UDPMAPSYNC_BIN=$(VMDAEMON) --env UDPMAPSYNC_CAPTURE=fentry" ./netns-test

.PHONY: demo
demo: deps build ## Three nodes in network namespaces: write on one, watch the others converge
	$(GO) run ./netns-test/demo --daemon $(BIN)

.PHONY: bench
bench: ## Run the Go benchmarks (encode, decode, coalesce, apply)
	$(GO) test -run '^$$' -bench . -benchmem ./wire ./loader ./replication

.PHONY: fuzz
fuzz: ## Fuzz the wire decoders for 30s each
	$(GO) test ./wire -run '^$$' -fuzz '^FuzzHeader$$' -fuzztime 30s
	$(GO) test ./wire -run '^$$' -fuzz '^FuzzChanges$$' -fuzztime 30s
	$(GO) test ./wire -run '^$$' -fuzz '^FuzzDescriptors$$' -fuzztime 30s

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: clean
clean: ## Remove build output
	rm -rf bin

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.DEFAULT_GOAL := build

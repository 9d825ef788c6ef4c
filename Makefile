# Dabba: the two commands a new user needs are `make run` and `make test`.
SHELL := bash
GO    ?= go
BIN   := bin
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/dabba?sslmode=disable
export RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672/

# Packages tested with the race detector: everything but the end-to-end
# suite, which drives built binaries.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v -e /e2e -e /tmpdeps)

# Fault tests restart the shared broker, which disturbs every other test on
# the machine: they skip unless DABBA_FAULTS=1 and carry Fault or Restart in
# their name. FAULT_PKGS are the packages that have any.
FAULT_RUN  = Fault|Restart
FAULT_PKGS = $(shell grep -rl --include='*_test.go' DABBA_FAULTS . | xargs -r -n1 dirname | sort -u)

# How long `make fuzz` gives each fuzz target.
FUZZTIME ?= 20s

.PHONY: run demo test test-faults bench bench-quick deps build vet fmt fuzz definitions page clean

## run: start PostgreSQL and RabbitMQ if needed, then every service, until Ctrl-C
run: deps build
	@$(BIN)/devstack

## demo: with `make run` going in another terminal, drive three riders to their customers
demo: build
	@$(BIN)/tracking simulate

## test: vet, unit and integration tests (race detector), then the e2e suite (which also validates compose.yaml)
test: deps vet
	$(GO) test -race -count=1 -timeout 15m $(UNIT_PKGS)
	$(GO) test -count=1 -p 1 -timeout 20m ./e2e/...

## test-faults: the slow fault cases that stop and start the broker
test-faults: deps
	$(if $(FAULT_PKGS),DABBA_FAULTS=1 $(GO) test -count=1 -p 1 -timeout 60m -run '$(FAULT_RUN)' $(FAULT_PKGS),@echo "test-faults: no fault tests")

## bench: ceilings, order rate, burst, locations and memory at full size (~15 min); table on stdout, JSON in e2e/bench/results.json
bench: deps
	$(GO) run ./e2e/bench

## bench-quick: the same at small sizes, in a minute or so; fails only on errors (a lost order), never on speed
bench-quick: deps
	$(GO) run ./e2e/bench -quick -out $${TMPDIR:-/tmp}/dabba-bench-quick.json

## soak: the stack at SOAK_RATE orders/s for SOAK (100/s, 30m), sampled every minute (RSS, goroutines, tables, queues, connections); fails if anything but the effect tables keeps growing; not in CI
SOAK      ?= 30m
SOAK_RATE ?= 100
soak: deps
	$(GO) run ./e2e/bench -only soak -soak $(SOAK) -soak-rate $(SOAK_RATE) -out $${TMPDIR:-/tmp}/dabba-soak.json

## deps: install (Debian), start and set up PostgreSQL and RabbitMQ; quick when all is in place
deps:
	@.ci/services.sh

## build: every binary into bin/
build:
	$(GO) build -o $(BIN)/ ./services/...

## definitions: regenerate services/rabbitmq/definitions.json from shared/broker's topology table
definitions:
	$(GO) generate ./services/dabba

## page: rebuild the tracking page's script and style sheet (Leaflet bundled in) from services/tracking/web-src; the result is committed, so go build needs no npm
page:
	cd services/tracking/web-src && npm ci && npm run build

## vet: gofmt and go vet
vet:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting (make fmt)"; exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w .

## fuzz: run each fuzz target for FUZZTIME (make test runs their seed corpora)
fuzz:
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
	  for t in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' "$$f" | cut -d' ' -f2); do \
	    echo "fuzz: $$t in $$(dirname "$$f") for $(FUZZTIME)"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) "$$(dirname "$$f")"; \
	  done; \
	done

clean:
	rm -rf $(BIN)

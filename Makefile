# Dabba: the two commands a new user needs are `make run` and `make test`.
SHELL := bash
GO    ?= go
BIN   := bin
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/dabba?sslmode=disable
export RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672/

# Packages tested with the race detector: everything but the end-to-end
# suite, which drives built binaries.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v -e /e2e -e /tmpdeps)

.PHONY: run test test-faults deps build vet fmt fuzz clean

## run: start PostgreSQL and RabbitMQ if needed, then every service, until Ctrl-C
run: deps build
	@$(BIN)/devstack

## test: vet, unit and integration tests (race detector), then the e2e suite
test: deps vet
	$(GO) test -race -count=1 -timeout 15m $(UNIT_PKGS)
	$(GO) test -count=1 -p 1 -timeout 20m ./e2e/...

## test-faults: the slow fault cases that restart the broker
test-faults: deps
	DABBA_FAULTS=1 $(GO) test -count=1 -p 1 -timeout 30m -run 'Restart' ./shared/broker/

deps:
	@.ci/services.sh

build:
	$(GO) build -o $(BIN)/ ./services/...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## fuzz: run each fuzz target for a short while (make test runs their seed corpora)
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./shared/events/

clean:
	rm -rf $(BIN)

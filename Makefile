# custody: lint, test and the local stack (moto emulator, no Docker).
# Each recipe runs as one bash script that stops at the first failing command.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:

# Dummy credentials and region for the emulator; CI-friendly cargo output.
export AWS_ACCESS_KEY_ID ?= testing
export AWS_SECRET_ACCESS_KEY ?= testing
export AWS_REGION ?= us-east-1
export CARGO_TERM_COLOR ?= never

PY := .venv/bin/python
LOCAL := .local

.PHONY: venv lint test up down fmt bench

venv:
	@infra/bootstrap.sh

# sam validate --lint runs cfn-lint in-process (samcli/commands/validate/validate.py)
# and works offline (checked in a network namespace with no interfaces); the
# dummy credentials only keep it away from any real account.
lint: venv
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	.venv/bin/cfn-lint template.yaml
	env AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
	  SAM_CLI_TELEMETRY=0 .venv/bin/sam validate --lint --template template.yaml --region us-east-1

# One emulator for the whole run (the Rust harness starts its own if
# CUSTODY_EMULATOR_ENDPOINT is unset).
test: venv lint
	infra/with-emulator.sh cargo test --workspace --all-targets

# Cold start, first invocation, size and throughput (docs/PERFORMANCE.md): prints
# the tables and writes docs/bench-results.json. Niced so it never starves other
# work; it builds the host release binaries and the arm64 ones (slow: LTO).
bench: venv
	nice -n 19 cargo run -q -p custody-bench -- --out docs/bench-results.json

# Emulator in the background (own session: Ctrl-C in this terminal does not
# reach it), resources provisioned from template.yaml, env saved to .local/env.
up: venv
	@mkdir -p $(LOCAL)
	if [[ -f $(LOCAL)/emulator.pid && -f $(LOCAL)/env ]] &&
	   ps -p "$$(cat $(LOCAL)/emulator.pid)" -o args= 2>/dev/null | grep -q infra/emulator.py; then
	  echo "local stack already up at $$(cat $(LOCAL)/endpoint); environment ($(LOCAL)/env):"
	  cat $(LOCAL)/env
	  exit 0
	fi
	setsid $(PY) infra/emulator.py --pidfile $(LOCAL)/emulator.pid \
	  </dev/null >$(LOCAL)/emulator.json 2>$(LOCAL)/emulator.log &
	emu=$$!
	for _ in {1..600}; do   # up to 60 s for the one-line JSON announcement
	  [[ -s $(LOCAL)/emulator.json ]] && break
	  kill -0 $$emu 2>/dev/null || { cat $(LOCAL)/emulator.log >&2; echo "emulator failed to start" >&2; exit 1; }
	  sleep 0.1
	done
	endpoint=$$($(PY) -c 'import json,sys; print(json.load(sys.stdin)["endpoint"])' <$(LOCAL)/emulator.json)
	echo "$$endpoint" >$(LOCAL)/endpoint
	echo "emulator at $$endpoint (pid $$(cat $(LOCAL)/emulator.pid), log $(LOCAL)/emulator.log)"
	# Keep the env file only if provisioning succeeds; otherwise take it all down.
	if ! cargo run -q -p custody-local --bin custody-local -- provision --endpoint "$$endpoint" --prefix local \
	     | tee $(LOCAL)/env.tmp; then
	  echo "provisioning failed; stopping the emulator" >&2
	  $(MAKE) --no-print-directory down >/dev/null
	  exit 1
	fi
	mv $(LOCAL)/env.tmp $(LOCAL)/env
	echo "local stack up. Use it with:  source $(LOCAL)/env     Stop it with:  make down"

down:
	@if [[ -f $(LOCAL)/emulator.pid ]]; then
	  pid=$$(cat $(LOCAL)/emulator.pid)
	  if ps -p "$$pid" -o args= 2>/dev/null | grep -q infra/emulator.py; then
	    kill -TERM "$$pid"
	    for _ in {1..50}; do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done
	  fi
	fi
	rm -rf $(LOCAL)
	echo "local stack down"

fmt:
	cargo fmt --all

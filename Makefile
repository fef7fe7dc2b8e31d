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

.PHONY: venv lint deploycheck test demo up down fmt bench build deploy redrive fuzz faults profile-import

venv:
	@infra/bootstrap.sh

# sam validate --lint runs cfn-lint in-process (samcli/commands/validate/validate.py)
# and works offline (checked in a network namespace with no interfaces); the
# dummy credentials only keep it away from any real account.
lint: venv
	@echo "lint: fmt, clippy (first run compiles the workspace: several minutes), cfn-lint, OpenAPI, sam validate"
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	.venv/bin/cfn-lint template.yaml
	$(PY) -c "from openapi_spec_validator import validate; import yaml; validate(yaml.safe_load(open('openapi.yaml')))"
	env AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
	  SAM_CLI_TELEMETRY=0 .venv/bin/sam validate --lint --template template.yaml --region us-east-1

# Deployability, offline (infra/deploycheck): the SAM transform `sam deploy` applies,
# cfn-lint on its output, our own dependency-cycle check, IAM documents (parliament),
# parameter constraints against samconfig.toml, AWS quotas, and a deploy of the
# transformed template into the emulator's CloudFormation. `deploycheck` prints the
# report; the pytest run (in `make test`) also proves each check can fail.
deploycheck: venv
	$(PY) -m infra.deploycheck

# One emulator for the whole run (the Rust harness starts its own if
# CUSTODY_EMULATOR_ENDPOINT is unset).
test: venv lint
	@echo "test: deployability checks (about 30 s), then every Rust test against one emulator (first run builds everything: about 12-15 minutes on 2 cores)"
	$(PY) -m pytest -q -p no:cacheprovider infra/deploycheck infra/test_emulator.py
	infra/with-emulator.sh cargo test --workspace --all-targets
	cat target/tmp/fault-injection-summary-*.txt
	$(MAKE) --no-print-directory console-test

# Cold start, first invocation, size and throughput (docs/PERFORMANCE.md): prints
# the tables and writes docs/bench-results.json. Niced so it never starves other
# work; it builds the host release binaries and the arm64 ones (slow: LTO).
bench: venv
	# The size rows build for Lambda's arm64 (zig from the ziglang wheel links it).
	rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 ||
	  echo "bench: could not add the aarch64-unknown-linux-gnu target; size rows will say why" >&2
	# The harness itself runs in the release profile too: the throughput rows run the
	# function code inside it, so they measure what is deployed.
	nice -n 19 cargo run -q --release -p custody-bench -- --out docs/bench-results.json

# Where the 1 M-row import spends its CPU (docs/PERFORMANCE.md, "Import profile"):
# Debian's perf over the import workload, with the harness built as released (LTO,
# the same opt-levels) but unstripped so perf can name functions. The report is
# split by process: the harness's own pid is the import; the destination simulator
# runs as a child `custody-bench sim-destination`.
PROFILE_ROWS ?= 1000000
profile-import: venv
	command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
	CARGO_TARGET_DIR=target/profile CARGO_PROFILE_RELEASE_STRIP=false \
	  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build -q --release -p custody-bench
	infra/with-emulator.sh perf record -q -F 499 -g -o target/profile/import.perf.data \
	  target/profile/release/custody-bench workload import $(PROFILE_ROWS)
	perf report -q -i target/profile/import.perf.data --no-children --sort pid,symbol \
	  --stdio -g none --percent-limit 0.7 2>/dev/null | head -60

# sam build / sam deploy as the README's Deploy section says, with the project's own
# cargo-lambda and zig (.venv/bin first on PATH; SAM's rust-cargolambda builder looks
# them up there). Release, arm64, LTO: slow on a first run.
SAM := env PATH="$(CURDIR)/.venv/bin:$$PATH" SAM_CLI_TELEMETRY=0 .venv/bin/sam

build: venv
	@echo "build: sam build, 5 functions in release for arm64 (first run: about 15 minutes on 2 cores)"
	rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 ||
	  rustup target list --installed | grep -qx aarch64-unknown-linux-gnu ||
	  { echo "build: needs the Rust target aarch64-unknown-linux-gnu (rustup target add aarch64-unknown-linux-gnu)" >&2; exit 1; }
	started=$$SECONDS
	$(SAM) build
	echo "build: done in $$((SECONDS - started)) s; artifacts in .aws-sam/build"

# Deploys with samconfig.toml's defaults (fill in its parameter_overrides first);
# `make deploy ARGS=--guided` asks for each value instead.
deploy: build
	$(SAM) deploy $(ARGS)

FUNCTIONS := -p oauth -p export -p import -p expiry -p dsar -p dsar-api -p custody-local

# The whole product on the local stack, step by step (README's first command).
demo: venv
	@echo "demo: building the functions and the local stack (first run: about 6-9 minutes on 2 cores; then seconds)"
	cargo build --bins $(FUNCTIONS)
	target/debug/custody-local demo

# The same stack left running (own session, so Ctrl-C here does not reach it):
# prints the base URL, a bearer token and a curl line for every route.
up: venv
	@mkdir -p $(LOCAL)
	if [[ -f $(LOCAL)/up.pid ]] && kill -0 "$$(cat $(LOCAL)/up.pid)" 2>/dev/null; then
	  echo "local stack already up:"; cat $(LOCAL)/ready; exit 0
	fi
	rm -f $(LOCAL)/ready
	echo "up: building the functions and the local stack (first run: about 6-9 minutes on 2 cores; then seconds)"
	cargo build --bins $(FUNCTIONS)
	env -u CUSTODY_EMULATOR_ENDPOINT setsid target/debug/custody-local up --ready-file $(LOCAL)/ready --state-file $(LOCAL)/stack.json --log-dir $(LOCAL)/logs \
	  </dev/null >$(LOCAL)/up.log 2>&1 &
	echo $$! >$(LOCAL)/up.pid
	for _ in {1..1200}; do   # up to 2 min for the stack to come up
	  [[ -s $(LOCAL)/ready ]] && break
	  kill -0 "$$(cat $(LOCAL)/up.pid)" 2>/dev/null || { cat $(LOCAL)/up.log >&2; echo "local stack failed to start" >&2; exit 1; }
	  sleep 0.1
	done
	cat $(LOCAL)/ready
	[[ -f console/dist/index.html ]] || echo "console: not built yet; build it with: npm --prefix console run build (served as soon as it exists)"
	echo "logs: $(LOCAL)/up.log (each function's also in $(LOCAL)/logs/<function>.log)    stop with: make down"

# Stops what `make up` started; every child process dies with it.
# The property tests of every parser of untrusted input, with many more cases than
# `make test` runs (shared/tests/properties.rs, the cursor property in kernel::store).
FUZZ_CASES ?= 20000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release -p custody --test properties
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release -p custody --lib -- any_cursor_decodes_or_is_refused

# The journeys under injected faults with many more seeds than `make test`
# (functions/{import,export,dsar}/tests/*/…faults.rs).
FAULT_SEEDS ?= 1000
faults: venv
	FAULT_SEEDS=$(FAULT_SEEDS) infra/with-emulator.sh cargo test -p import --test import faults -- --nocapture
	FAULT_SEEDS=$(FAULT_SEEDS) infra/with-emulator.sh cargo test -p export --test export aws_faults -- --nocapture
	FAULT_SEEDS=$(FAULT_SEEDS) infra/with-emulator.sh cargo test -p dsar --test dsar faults -- --nocapture

# Replays a failure queue of the running local stack into its function (README §
# Redrive failed events): make redrive ARGS="--queue ImportFailureQueue --dry-run"
redrive:
	cargo run -q -p custody-local --bin custody-redrive -- --local $(ARGS)

down:
	@if [[ -f $(LOCAL)/up.pid ]]; then
	  pid=$$(cat $(LOCAL)/up.pid)
	  if kill -0 "$$pid" 2>/dev/null; then
	    kill -TERM "$$pid"
	    for _ in {1..100}; do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done
	    kill -KILL "$$pid" 2>/dev/null || true
	  fi
	fi
	rm -rf $(LOCAL)
	echo "local stack down"

fmt:
	cargo fmt --all

# Debian's Chromium for the console's browser tests (Playwright cannot download its
# own browser here); installed when missing, with sudo when not root.
.PHONY: chromium
chromium:
	if ! command -v "$${CHROMIUM_PATH:-/usr/bin/chromium}" >/dev/null; then
	  echo "chromium: installing Debian's chromium (apt-get)"
	  sudo=""; [[ $$(id -u) -eq 0 ]] || sudo="sudo"
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
	    { echo "chromium: could not install it; install Debian's chromium or set CHROMIUM_PATH" >&2; exit 1; }
	fi

# The web console's browser journey (console/tests) in Debian's Chromium against a
# fresh local stack; the stack is stopped whatever the outcome.
.PHONY: console-test
console-test: chromium
	npm --prefix console ci --no-audit --no-fund
	npm --prefix console run build
	$(MAKE) --no-print-directory up
	status=0
	npm --prefix console run test:e2e || status=$$?
	$(MAKE) --no-print-directory down
	exit $$status

# Publishes the web console to the stack's bucket behind CloudFront: builds
# console/dist, writes its config.json from the stack's outputs, uploads it (hashed
# assets immutable, everything else no-cache) and invalidates the distribution.
# The stack: STACK=<name>, else samconfig.toml's stack_name. Needs the AWS CLI and
# credentials for the stack's account and region (AWS_PROFILE / AWS_REGION).
.PHONY: console-deploy
console-deploy: venv
	# The emulator's dummy credentials and region (top of this file) would shadow yours.
	$(if $(filter file,$(origin AWS_ACCESS_KEY_ID)),unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY,:)
	$(if $(filter file,$(origin AWS_REGION)),unset AWS_REGION,:)
	command -v aws >/dev/null || { echo "console-deploy: needs the AWS CLI (aws)" >&2; exit 1; }
	stack="$${STACK:-$$($(PY) -c 'import tomllib; print(tomllib.load(open("samconfig.toml", "rb"))["default"]["global"]["parameters"]["stack_name"])')}"
	described="$$(mktemp)"
	trap 'rm -f "$$described"' EXIT
	aws cloudformation describe-stacks --stack-name "$$stack" --query 'Stacks[0]' --output json > "$$described"
	value() { $(PY) -c 'import json, sys; s = json.load(open(sys.argv[1])); kind, key = sys.argv[2:]; print({i[kind + "Key"]: i.get(kind + "Value", "") for i in s.get(kind + "s", [])}.get(key, ""))' "$$described" "$$@"; }
	bucket="$$(value Output ConsoleBucketName)"
	distribution="$$(value Output ConsoleDistributionId)"
	client="$$(value Output ConsoleClientId)"
	[[ -n "$$bucket" && -n "$$distribution" ]] || { echo "console-deploy: stack $$stack has no console (ConsoleBucketName, ConsoleDistributionId outputs)" >&2; exit 1; }
	[[ -n "$$client" ]] || { echo "console-deploy: stack $$stack has no ConsoleClientId output (IdentityProvider=external: set OidcConsoleClientId; README.md § The console)" >&2; exit 1; }
	npm --prefix console ci --no-audit --no-fund
	npm --prefix console run build
	# config.json: apiUrl, authority, clientId, redirectPath, stage.
	$(PY) -c 'import json, sys; keys = ["apiUrl", "authority", "clientId", "redirectPath", "stage"]; open("console/dist/config.json", "w").write(json.dumps(dict(zip(keys, sys.argv[1:])), indent=2) + "\n")' \
	  "$$(value Output ConsoleApiUrl | sed 's:/*$$::')" "$$(value Output OidcAuthority)" "$$client" /callback "$$(value Parameter Stage)"
	cat console/dist/config.json
	# New hashed assets first (immutable), then the entry points that name them
	# (revalidated on every load), then the assets no build names any more.
	aws s3 sync console/dist/assets "s3://$$bucket/assets" --only-show-errors \
	  --cache-control "public, max-age=31536000, immutable"
	aws s3 sync console/dist "s3://$$bucket" --only-show-errors --delete \
	  --exclude "assets/*" --cache-control "no-cache"
	aws s3 sync console/dist/assets "s3://$$bucket/assets" --only-show-errors --delete \
	  --cache-control "public, max-age=31536000, immutable"
	aws cloudfront create-invalidation --distribution-id "$$distribution" --paths "/*" \
	  --query 'Invalidation.Id' --output text
	echo "console-deploy: $$(value Output ConsoleUrl) (stack $$stack; the invalidation takes a minute or two)"

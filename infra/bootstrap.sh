#!/usr/bin/env bash
# Create <repo>/.venv and install infra/requirements.txt into it.
# Idempotent: pip runs only when the requirements file changed since the last
# successful install (hash stamp in .venv/.requirements.sha256).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/infra/requirements.txt"
stamp="$venv/.requirements.sha256"

if ! command -v python3 >/dev/null 2>&1; then
  echo "bootstrap: python3 not found; install Python 3 (with the venv module) first" >&2
  exit 1
fi

created=""
if [[ ! -x "$venv/bin/python" ]]; then
  # Debian/Ubuntu need the python3-venv package for this; don't leave a half-made venv.
  python3 -m venv "$venv" || { rm -rf "$venv"; echo "bootstrap: python3 -m venv $venv failed" >&2; exit 1; }
  created="created $venv; "
fi

# hashlib rather than sha256sum, which macOS lacks.
want="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$req")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "bootstrap: ${created}$venv is up to date"
  exit 0
fi

# A first install takes a few minutes (moto, cfn-lint, aws-sam-cli, cargo-lambda and
# zig are large): say so, and show pip's own lines, one per package.
echo "bootstrap: installing $req into $venv (first run: about 2-3 minutes)"
started=$SECONDS
if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q --upgrade pip &&
       "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$req" |
         { grep --line-buffered -E '^(Collecting|Successfully installed)' || true; }; }; then
  echo "bootstrap: pip install -r $req failed (see above)" >&2
  exit 1
fi
echo "$want" >"$stamp"
echo "bootstrap: ${created}installed $req into $venv in $((SECONDS - started)) s"

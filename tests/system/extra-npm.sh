#!/usr/bin/env bash
# npm packages some tests need (issue 15: nodemailer as a real client), installed into a cache
# folder rather than the checkout. Idempotent: does nothing when the pinned version is there.
# Tests find it in tests/clients/runners.py (same folder rule).
set -uo pipefail
NODEMAILER_VERSION=10.6.0
dir="${EMAIL_RECONCILER_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/email-reconciler/node}"
marker="$dir/node_modules/nodemailer/package.json"
if [ -f "$marker" ] && grep -q "\"version\": \"$NODEMAILER_VERSION\"" "$marker"; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "tests/system/extra-npm.sh: npm not found; install nodejs and npm for the nodemailer tests"
  exit 0
fi
mkdir -p "$dir"
echo "tests/system/extra-npm.sh: installing nodemailer@$NODEMAILER_VERSION into $dir"
npm install --prefix "$dir" --no-audit --no-fund --no-save --silent "nodemailer@$NODEMAILER_VERSION" \
  || echo "tests/system/extra-npm.sh: npm install failed; the nodemailer tests will skip (fail in CI)"
exit 0

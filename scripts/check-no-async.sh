#!/usr/bin/env bash
# Fails when an async runtime (or a second TLS/crypto stack) enters the shipped binary's dependency
# tree. cargo-deny's bans say the same; this check needs nothing but cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree --locked -e normal,no-proc-macro --target x86_64-unknown-linux-gnu --prefix none --format '{p}' -p scalr-agent)
banned=$(printf '%s\n' "$tree" | awk '{print $1}' | sort -u | grep -E '^(tokio|async-std|smol|async-io|async-executor|futures-executor|openssl-sys|aws-lc-sys|aws-lc-rs)$' || true)
if [ -n "$banned" ]; then
  echo "check-no-async: banned crates in the shipped binary: $banned" >&2
  exit 1
fi
echo "check-no-async: $(printf '%s\n' "$tree" | awk '{print $1}' | sort -u | wc -l) crates, no async runtime, no second TLS stack"

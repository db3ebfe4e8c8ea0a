#!/usr/bin/env bash
# Builds the fully static release binary (glibc crt-static; no musl target exists on these machines)
# and fails if it is dynamically linked. Prints the path of the binary on the last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --locked --release --target "$target" --bin scalr-agent >&2
bin="$root/target/$target/release/scalr-agent"
if ldd "$bin" 2>&1 | grep -qv -e 'not a dynamic executable' -e 'statically linked'; then
  echo "build-static: $bin is dynamically linked:" >&2
  ldd "$bin" >&2
  exit 1
fi
"$bin" version | grep -q '^static: yes$' || { echo "build-static: binary does not report static: yes" >&2; exit 1; }
echo "$bin"

#!/usr/bin/env bash
# Build kxdp and run the embedded default: `kxdp demo` (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin kxdp
exec ./target/release/kxdp demo "$@"

#!/usr/bin/env bash
# Run every test: formatting, lints, unit/property/golden tests, and (as
# root) the end-to-end tests in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
bash scripts/fuzz.sh 20

#!/usr/bin/env bash
# Bounded fuzz run of every cargo-fuzz target, seeded with real packets.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# accept them, and `--sanitizer none` avoids the sanitizer runtimes (the
# targets assert their own invariants; Rust code is memory-safe here).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/../dataplane"
secs="${1:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
for target in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
    corpus="$(mktemp -d)"
    trap 'rm -rf "$corpus"' EXIT
    cp fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    echo "fuzz: $target for ${secs}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" --sanitizer none "$corpus" -- \
        -max_total_time="$secs" -print_final_stats=1 2>&1 | tail -4
    rm -rf "$corpus"
done

#!/usr/bin/env bash
# Install what kxdp needs on a fresh Debian machine of this kind, idempotently:
# C toolchain for the XDP program and libxdp (clang, llvm, libelf, zlib),
# iproute2/nftables/iptables for the test topologies and kernel baselines,
# the benchmark's third-party traffic generators (trafgen from netsniff-ng,
# xdp-trafficgen from xdp-tools), and a bpffs mount for libxdp's pins.
# Safe to run again.
set -euo pipefail

PACKAGES=(clang llvm libelf-dev zlib1g-dev libbpf-dev pkg-config make m4
          iproute2 nftables iptables ethtool tcpdump dnsmasq-base socat
          jq containernetworking-plugins netsniff-ng xdp-tools)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libxdp and the XDP loader pin objects under bpffs.
if [[ $(id -u) -eq 0 ]] && ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
fi

# tests/deploy_manifests.rs: the Kubernetes schema validator, pinned. It
# ships the OpenAPI schemas of every Kubernetes release it supports, so
# validation needs no network. (jq and the CNI plugins above run the image's
# scripts and the real ptp + host-local.)
KUBERNETES_VALIDATE=1.37.0
if ! python3 -m kubernetes_validate --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE"; then
    echo "setup: installing kubernetes-validate $KUBERNETES_VALIDATE" >&2
    pip_install=(python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE")
    # A Debian-managed python3 refuses plain pip installs (PEP 668).
    "${pip_install[@]}" 2>/dev/null || "${pip_install[@]}" --break-system-packages
fi

command -v cargo >/dev/null || { echo "setup: cargo not found (this machine kind ships Rust via rustup)" >&2; exit 1; }

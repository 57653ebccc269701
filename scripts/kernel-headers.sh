#!/usr/bin/env bash
# Give BCC the kernel headers it compiles against: /lib/modules/RELEASE/build.
#
#   scripts/kernel-headers.sh RELEASE [MODULES_DIR [SOURCES_DIR]]
#
# A kernel with its own headers keeps them. A kernel without (e.g. a Firecracker
# guest) gets links to Debian's newest installed headers (…-amd64 as build,
# …-common as source): they do not match the running kernel, so probes read only
# tracepoint arguments and __sk_buff fields; `kpbench doctor` reports the
# mismatch. When there are no headers to link, this fails: every BPF program
# (probes and eBPF datapaths) would fail to compile, so a set-up that went on
# would only move the failure into the benchmark.
set -euo pipefail

krel="${1:?usage: kernel-headers.sh RELEASE [MODULES_DIR [SOURCES_DIR]]}"
modules="${2:-/lib/modules}"
sources="${3:-/usr/src}"
moddir="$modules/$krel"

log() { printf 'setup: %s\n' "$*" >&2; }

if [ -e "$moddir/build/include" ]; then
    exit 0
fi
hdr="$(ls -d "$sources"/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)"
common="$(ls -d "$sources"/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)"
if [ -z "$hdr" ] || [ -z "$common" ]; then
    log "error: no kernel headers for $krel: $moddir/build is missing and $sources has no" \
        "linux-headers-*-amd64 and -common trees to link; install linux-headers-amd64" \
        "(apt-get install linux-headers-amd64) and run scripts/setup.sh again"
    exit 1
fi
log "linking $moddir/build -> $hdr and source -> $common (headers do not match $krel)"
mkdir -p "$moddir"
ln -sfn "$hdr" "$moddir/build"
ln -sfn "$common" "$moddir/source"
if [ ! -e "$moddir/build/include" ]; then
    log "error: $hdr has no include/ directory: reinstall linux-headers-amd64"
    exit 1
fi

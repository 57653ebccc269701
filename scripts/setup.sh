#!/usr/bin/env bash
# Idempotent set-up: Debian packages, kernel headers for BCC, tracefs, and a
# virtual environment (.venv) that sees Debian's python3-bpfcc.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh
as_root "$@"

APT_PACKAGES=(
    iproute2 iptables nftables ipset conntrack ipvsadm ethtool tcpdump
    tcpreplay netsniff-ng chromium bpftool
    # socket workloads: ping-pong/under-load generators, streams, the compiler for kpb-crr
    sockperf iperf3 gcc libc6-dev
    python3-venv python3-pip python3-bpfcc bpfcc-tools linux-headers-amd64
    # `kpbench vm` (virtme-ng): QEMU, a distro kernel to boot (its headers above),
    # busybox for virtme's initramfs; vagrant only to validate the Vagrantfile.
    qemu-system-x86 linux-image-amd64 busybox-static vagrant
)

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# BCC compiles against /lib/modules/$(uname -r)/build: link Debian's headers
# when the kernel has none of its own; no headers at all is an error.
scripts/kernel-headers.sh "$(uname -r)"

# The connect-request-response-close generator (tools/crr/crr.c), rebuilt only when
# its source or the compiler changed; a failed build fails set-up.
crr_src=tools/crr/crr.c crr_bin=build/kpb-crr
crr_want="$(sha256sum "$crr_src" | cut -d' ' -f1) $(gcc -dumpfullversion 2>/dev/null || echo none)"
if [ ! -x "$crr_bin" ] || [ "$(cat "$crr_bin.stamp" 2>/dev/null)" != "$crr_want" ]; then
    log "building $crr_bin from $crr_src"
    mkdir -p build
    rm -f "$crr_bin.stamp"
    gcc -O2 -Wall -Wextra -Werror -pthread -o "$crr_bin.tmp" "$crr_src" || {
        log "error: cannot build $crr_bin from $crr_src (gcc failed above); the socket" \
            "workload tcp-crr needs it"
        exit 1
    }
    mv "$crr_bin.tmp" "$crr_bin"
    echo "$crr_want" >"$crr_bin.stamp"
fi

if [ ! -d /sys/kernel/tracing/events ] && [ -d /sys/kernel/tracing ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || log "warning: could not mount tracefs"
fi
if [ ! -d /sys/kernel/debug/tracing ] && [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi

# Everything the harness imports, from this checkout (an editable install of another
# checkout would run that one's code).
venv_ready() {
    .venv/bin/python - "$PWD" 2>/dev/null <<'PY'
import sys, bench, bcc, pyroute2, scapy, numpy  # noqa: F401
sys.exit(0 if bench.__file__.startswith(sys.argv[1] + "/") else 1)
PY
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import bcc" 2>/dev/null; then
    log "creating .venv on /usr/bin/python3 with system site packages (for Debian's bcc)"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
# The VM kernel's BCC probes compile against its own headers: install the headers
# of every /boot image (linux-headers-amd64 follows linux-image-amd64, but an
# older image may still be there).
for img in /boot/vmlinuz-*; do
    [ -e "$img" ] || continue
    rel="${img#/boot/vmlinuz-}"
    if [ ! -d "/usr/src/linux-headers-$rel" ]; then
        log "installing headers for the VM kernel $rel"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "linux-headers-$rel" >/dev/null || {
            log "error: cannot install linux-headers-$rel for the VM kernel $img (BPF" \
                "programs would not compile inside it); remove that image or make its" \
                "headers installable, then run scripts/setup.sh again"
            exit 1
        }
    fi
done

# pip runs only when what it would install changed: the stamp holds a hash of
# pyproject.toml and the interpreter, written after a successful install.
VIRTME_NG="virtme-ng>=1.30"  # boots a kernel for `kpbench vm` (Debian 12 has no package)
stamp=.venv/.kpbench-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $VIRTME_NG $(.venv/bin/python -V 2>&1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! venv_ready; then
    pip_log=.venv/setup-pip.log
    log "installing kpbench and its Python dependencies into .venv (pip's output: $pip_log)"
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e ".[test]" &&
           .venv/bin/python -m pip install -q "$VIRTME_NG"; } >"$pip_log" 2>&1; then
        log "pip failed; its last lines:"
        tail -n 20 "$pip_log" >&2
        exit 1
    fi
    venv_ready || { log "venv check failed: .venv cannot import bench, bcc, pyroute2, scapy" \
                        "and numpy from this checkout"; exit 1; }
    echo "$want" >"$stamp"
    log "ready: .venv/bin/kpbench"
fi

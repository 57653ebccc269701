"""Tests that only mean something inside a ``kpbench vm`` guest.

They need a kernel with IPVS, kprobes and matching headers, and check what a
VM run records (KVM or TCG). On the host they are not collected at all: the
test command's VM stage (``scripts/test.sh`` -> ``kpbench vm test``) boots
the distro kernel and runs them there, and that stage failing fails the
whole test command.
"""

from __future__ import annotations

from bench.kernel.vm import in_guest

collect_ignore_glob = [] if in_guest() else ["test_*.py"]

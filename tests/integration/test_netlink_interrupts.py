"""A signal during netlink requests stops the run as a signal, not as an error.

pyroute2 runs each request on an event loop of its own; an interrupt raised in
the middle of one used to make the handle's close() fail with "Event loop
stopped before Future completed", which replaced the interrupt and ended a
Ctrl-C'd run as an internal error (bench.cluster.netlink).
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator

import pytest
from pyroute2 import netns

from bench import interrupts
from bench.cluster.netlink import in_netns

pytestmark = pytest.mark.privileged


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"kpb{secrets.token_hex(3)}-nl"
    with in_netns(name, create=True):
        pass
    yield name
    netns.remove(name)


def test_a_signal_waits_for_the_requests_and_then_stops(handlers: None,
                                                         namespace: str) -> None:
    seen = []
    with pytest.raises(interrupts.Terminated), in_netns(namespace) as ns:
        os.kill(os.getpid(), signal.SIGTERM)
        seen.append(ns.link_lookup(ifname="lo"))  # the handle still works
        ns.link("set", index=seen[0][0], state="up")
    assert seen and seen[0]


def test_the_handle_is_usable_after_an_interrupted_block(handlers: None,
                                                          namespace: str) -> None:
    with pytest.raises(KeyboardInterrupt), in_netns(namespace) as ns:
        os.kill(os.getpid(), signal.SIGINT)
        ns.link_lookup(ifname="lo")
    interrupts.install()  # a later run in the same process
    with in_netns(namespace) as ns:
        assert ns.link_lookup(ifname="lo")


def test_no_namespace_name_is_refused() -> None:
    with pytest.raises(ValueError, match="namespace name"), in_netns(""):
        pass

"""Emptying a probe's BPF map while its program runs (no root, no BCC): the program
may delete an entry between the listing of the keys and their deletion."""

from __future__ import annotations

from collections.abc import Iterator

from bench.measure.probes.effect import EffectProbe
from bench.measure.probes.loader import TcHook


class Table:
    """A BPF hash map as BCC's ``HashTable`` sees it (bcc/table.py)."""

    def __init__(self, keys: list[int], vanishing: int | None = None) -> None:
        self.entries = dict.fromkeys(keys, 0)
        self.vanishing = vanishing  # deleted by the program right after the keys are listed

    def keys(self) -> Iterator[int]:
        listed = list(self.entries)
        if self.vanishing is not None:
            self.entries.pop(self.vanishing, None)
        return iter(listed)

    def __delitem__(self, key: int) -> None:
        if key not in self.entries:
            raise KeyError  # bpf_delete_elem failed: ENOENT
        del self.entries[key]

    def clear(self) -> None:
        # BCC's own clear(): key by key, so an entry gone meanwhile raises KeyError.
        for k in self.keys():
            self.__delitem__(k)


def test_an_effect_window_opens_while_the_program_changes_its_map() -> None:
    probe = EffectProbe([TcHook("ns")])
    seen = Table([1, 2, 3], vanishing=2)
    probe._bpf = {b"seen": seen}
    probe._zero()
    assert seen.entries == {}

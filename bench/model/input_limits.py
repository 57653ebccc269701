"""The one reader of every input file: bounded, decoded, parsed, its errors one line.

Services files (YAML/JSON), scenarios (TOML) and result files (JSON) are all
read through here, so that a hostile or damaged file is refused the same way
whatever its kind: before it is read whole if it is too large, with a clear
message if it is not UTF-8, and before the parser recurses or expands too far
(deep nesting, YAML alias "bombs", integers with thousands of digits). Every
refusal is an :class:`InputError` naming the file (and, where known, the
line), which the CLI prints as one line with exit code 2.

The limits are far beyond any real input (a ``kubectl get svc,endpointslices
-A -o yaml`` of 10 000 Services is about 30 MB, 1.5 M nodes and 12 levels
deep) and low enough that refusing costs well under a second and a few MB.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import tomllib
from pathlib import Path
from typing import Any

import yaml

from bench.errors import InputError

MiB = 1024 * 1024
MAX_SERVICES_BYTES = 64 * MiB
MAX_SCENARIO_BYTES = 1 * MiB
MAX_RESULT_BYTES = 128 * MiB
_CHUNK = MiB
# Nesting: Kubernetes objects go about 12 levels deep, results 8, scenarios 3.
MAX_DEPTH = 64
# YAML nodes after alias expansion: what a consumer walking the data would visit.
MAX_YAML_NODES = 10_000_000
MAX_YAML_ALIASES = 10_000
# An integer no field of any input needs (ports, counts, nanoseconds fit in 20 digits).
MAX_INT_DIGITS = 40
_MAX_INT = 10**MAX_INT_DIGITS


def read_input(path: str | Path, max_bytes: int = MAX_SERVICES_BYTES) -> str:
    """The UTF-8 text of an input file, refused (InputError) if unreadable, too large or binary."""
    src = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise InputError(f"is {size / MiB:.1f} MiB, more than the {max_bytes / MiB:g} "
                                 "MiB an input of this kind may be; pass the right file",
                                 source=src)
            # A pipe or a device reports size 0: read in chunks up to one byte past the
            # limit, and stop at the first NUL byte (no text format allows one), so that
            # /dev/zero or a binary stream is refused after one chunk, not after the limit.
            chunks: list[bytes] = []
            got = 0
            while got <= max_bytes:
                chunk = f.read(min(_CHUNK, max_bytes + 1 - got))
                if not chunk:
                    break
                if b"\0" in chunk:
                    raise InputError("is binary (holds NUL bytes), not a text file; pass a "
                                     "YAML, JSON or TOML file", source=src)
                chunks.append(chunk)
                got += len(chunk)
            data = b"".join(chunks)
    except FileNotFoundError:
        raise InputError("no such file; check the path", source=src) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", source=src) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", source=src) from None
    if len(data) > max_bytes:
        raise InputError(f"is larger than the {max_bytes / MiB:g} MiB an input of this kind "
                         "may be; pass the right file", source=src)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"is not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}, "
                         f"offset {e.start}); pass a text file", source=src) from None


_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 4, 4


def brief(value: Any) -> str:
    """A short repr of a value quoted in an error (never the whole of a huge one)."""
    return _REPR.repr(value)


# -- checks on a parsed tree ------------------------------------------------------------------

def check_tree(doc: Any, source: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a parsed document nested deeper than ``max_depth`` or holding an integer
    longer than MAX_INT_DIGITS digits. Iterative: a deep document cannot recurse here."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, dict | list):
            if depth > max_depth:
                raise InputError(f"nested more than {max_depth} levels deep; the file is "
                                 "damaged or not of this kind", source=source)
            children = obj.values() if isinstance(obj, dict) else obj
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | int))
        elif isinstance(obj, int) and not isinstance(obj, bool) and not -_MAX_INT < obj < _MAX_INT:
            raise InputError(f"holds an integer of more than {MAX_INT_DIGITS} digits; no field "
                             "takes such a number", source=source)


def _too_deep(source: str) -> InputError:
    return InputError(f"nested more than {MAX_DEPTH} levels deep; the file is damaged or not "
                      "of this kind", source=source)


def _long_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:  # checked before int(), which is slow on long ones
        raise _LongInt(len(text.lstrip("-")))
    return int(text)


class _LongInt(ValueError):
    def __init__(self, digits: int) -> None:
        super().__init__(f"an integer of {digits} digits (more than {MAX_INT_DIGITS}); no field "
                         "takes such a number")


def _finite_float(text: str) -> float:
    # JSON has no NaN or Infinity: Python's parser accepts them, kpbench never writes them.
    if text in ("NaN", "Infinity", "-Infinity"):
        raise ValueError(f"{text} is not a JSON number")
    return float(text)


# -- JSON -------------------------------------------------------------------------------------

def parse_json(text: str, source: str) -> Any:
    """Parse JSON text, bounded (depth, integer digits, no NaN/Infinity)."""
    try:
        doc = json.loads(text, parse_int=_long_int, parse_constant=_finite_float)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})",
                         source=source) from None
    except RecursionError:
        raise _too_deep(source) from None
    except ValueError as e:  # _LongInt, NaN/Infinity
        raise InputError(f"not valid JSON: {e}", source=source) from None
    # Depth is bounded by the decoder's recursion limit (caught above) and integers by
    # parse_int: no walk over the tree (a result holds 200 000 histogram buckets).
    return doc


def float_is_finite(x: Any) -> bool:
    """True for an int or a finite float (not bool, NaN or an infinity)."""
    return (isinstance(x, int | float) and not isinstance(x, bool)
            and (isinstance(x, int) or math.isfinite(x)))


# -- TOML -------------------------------------------------------------------------------------

def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text, bounded (depth, integer digits)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not valid TOML: {e}", source=source) from None
    except RecursionError:
        raise _too_deep(source) from None
    except ValueError:
        # tomllib's only other ValueError: int() refusing thousands of digits.
        raise InputError(f"not valid TOML: an integer of more than {MAX_INT_DIGITS} digits; "
                         "no key takes such a number", source=source) from None
    check_tree(doc, source)
    return doc


# -- YAML -------------------------------------------------------------------------------------

class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts, while composing, how deep the document goes and how many
    nodes it would have with every alias expanded, and stops past the limits.

    An alias costs the expanded size of the node it names, computed once per
    anchor, so a "billion laughs" document is refused after a few hundred
    events, without ever building (or printing) its expansion.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._total = 0
        self._sizes: list[int] = []  # expanded sizes of the nodes being composed
        self._anchor_size: dict[int, int] = {}

    def _count(self, nodes: int) -> None:
        self._total += nodes
        if self._total > MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {MAX_YAML_NODES} nodes with its aliases expanded "
                                 "(an alias bomb?); write the objects out without aliases")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases")
            size = self._anchor_size.get(id(node))
            if size is None:  # its anchor is still being composed: the node holds itself
                raise yaml.YAMLError("a recursive alias (a node that contains itself)")
            self._count(size)
            if self._sizes:
                self._sizes[-1] += size
            return node
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(event, yaml.ScalarEvent) and event.tag is None and event.implicit[0]:
            value = event.value.lstrip("+-").replace("_", "")
            if len(value) > MAX_INT_DIGITS and value.isdigit():
                raise yaml.YAMLError(f"an integer of {len(value)} digits (more than "
                                     f"{MAX_INT_DIGITS}); no field takes such a number")
        self._sizes.append(0)
        try:
            node = super().compose_node(parent, index)
        finally:
            inner = self._sizes.pop()
            self._depth -= 1
        size = 1 + inner
        if event.anchor is not None:
            self._anchor_size[id(node)] = size
        # Its inner nodes were counted into the total as they were composed; the node
        # itself counts once, and its whole expanded size counts into its parent's.
        self._count(1)
        if self._sizes:
            self._sizes[-1] += size
        return node


def _flow_nesting_exceeds(text: str, limit: int) -> bool:
    """Whether flow collections (``[`` and ``{``, quoted text skipped) nest deeper than
    ``limit``: PyYAML's scanner spends seconds on a few hundred such levels (2 s at 233
    on a 2-vCPU guest here) before the loader's own depth bound is reached."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, quote = 0, ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return False


def parse_yaml_documents(text: str, source: str) -> list[Any]:
    """Parse a YAML stream into its documents, bounded (depth, expanded nodes, aliases,
    integer digits). Parser messages are cut to one line with the line number."""
    if _flow_nesting_exceeds(text, MAX_DEPTH):
        raise _too_deep(source)
    docs: list[Any] = []
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader checks the characters here already
        while loader.check_data():
            docs.append(loader.get_data())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InputError(f"not valid YAML/JSON: {where}{_short(problem)}",
                         source=source) from None
    except RecursionError:
        raise _too_deep(source) from None
    except ValueError as e:  # a constructor's int()/float() on an odd scalar
        raise InputError(f"not valid YAML/JSON: {_short(str(e))}", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()
    # No check_tree walk: the loader bounded depth and digits while composing, and a
    # walk would visit an aliased node once per alias.
    return docs


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."

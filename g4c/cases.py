"""Conformance cases named by what they are, not by pytest node ids: a test module or test
function, and optionally values of its parameters.

    Case.of("test_model_in_type", qtype=("Q4_0", "Q8_0"))     every runtime's Q4_0 and Q8_0 cases
    Case.parse("test_batched_decode_equals_single[n_seq=2]")    the same from a command line
    Case.parse("test_weight_types")                             a whole module

Departures (g4c.runtime.Departure) and case selections (`pytest conformance --case ...`)
both match these against a test's module, function name and parameters, so neither depends
on how pytest spells an id. Parameter values compare as strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import G4CError

_SYNTAX = re.compile(r"(\w+)(?:\[(.*)\])?")


@dataclass(frozen=True)
class Case:
    test: str  # a module (test_window) or a test function (test_window_edge_positions)
    params: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, allowed values) pairs

    @classmethod
    def of(cls, test: str, **params: Sequence[str] | str) -> "Case":
        return cls(test, tuple((k, (v,) if isinstance(v, str) else tuple(map(str, v))) for k, v in sorted(params.items())))

    @classmethod
    def parse(cls, text: str) -> "Case":
        """'test_name' or 'test_name[param=value|value,param=value]'."""
        m = _SYNTAX.fullmatch(text.strip())
        if not m:
            raise G4CError(f"cannot read a case from {text!r} (e.g. test_window or test_greedy_parity[qtype=Q4_0|Q8_0])")
        params = {}
        for part in filter(None, (m.group(2) or "").split(",")):
            key, eq, values = part.partition("=")
            if not eq or not key.strip() or not values:
                raise G4CError(f"case {text!r}: {part!r} is not param=value[|value]")
            params[key.strip()] = tuple(v.strip() for v in values.split("|"))
        return cls.of(m.group(1), **params)

    def matches(self, module: str, test: str, params: Mapping[str, object]) -> bool:
        """True for a test of this module or name whose parameters take the listed values (a
        parameter the test does not have never matches)."""
        if self.test not in (module, test):
            return False
        return all(k in params and str(params[k]) in values for k, values in self.params)

    def __str__(self) -> str:
        inner = ",".join(f"{k}={'|'.join(v)}" for k, v in self.params)
        return f"{self.test}[{inner}]" if inner else self.test

"""Conformance result ids: a test named apart from the runtime it ran on."""

from __future__ import annotations

import os
import re

NO_RUNTIME = "(model checks)"


def split_nodeid(nodeid: str, runtimes) -> tuple[str, str]:
    """('cpu', 'test_dense.py::test_dense_logits[12b-like]') from a pytest node id whose first
    parameter is the runtime; (NO_RUNTIME, id) for a test that takes none."""
    path, _, name = nodeid.partition("::")
    base = f"{os.path.basename(path)}::{name}"
    m = re.match(r"(.*)\[([^\]]*)\]$", base)
    if m:
        params = m.group(2).split("-", 1)
        if params[0] in runtimes:
            rest = params[1] if len(params) > 1 else ""
            return params[0], f"{m.group(1)}[{rest}]" if rest else m.group(1)
    return NO_RUNTIME, base


def departure(runtime, test_id: str) -> str | None:
    """The reason a runtime declares for departing from the reference on this test (its
    `departures`: regular expression on the test id -> reason naming the spec section)."""
    for pattern, reason in getattr(runtime, "departures", {}).items():
        if re.fullmatch(pattern, test_id):
            return reason
    return None

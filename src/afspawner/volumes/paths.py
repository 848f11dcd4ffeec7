"""Safe rendering of templated paths (``/ceph/cms/store/user/{username}``).

Every substituted value becomes exactly one path component: characters outside
``[a-zA-Z0-9._]`` (and a leading dot) are written as ``-XX`` hex escapes, ``-`` included, so the
mapping is injective and a value can never add ``/``, ``..`` or a hidden file name.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from afcore.templates import fill

_SAFE = frozenset(string.ascii_letters + string.digits + "._")


def safe_component(value: str) -> str:
    """``value`` as one safe path component (``o'brien`` → ``o-27brien``, ``..`` → ``-2e.``)."""
    out = []
    for i, ch in enumerate(value):
        if ch in _SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"-{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out) or "-"


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{name}`` placeholders with escaped values (templates were validated at load)."""
    return fill(template, values, safe_component)

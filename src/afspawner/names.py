"""Kubernetes-safe names and label values derived from hub user and server names."""

from __future__ import annotations

import hashlib
import string

_DNS_SAFE = frozenset(string.ascii_lowercase + string.digits)
_LABEL_SAFE = frozenset(string.ascii_letters + string.digits + "-_.")


def dns_escape(value: str) -> str:
    """Lower-case alphanumerics kept; anything else as ``-xx`` hex (injective)."""
    out = []
    for ch in value:
        if ch in _DNS_SAFE:
            out.append(ch)
        else:
            out.extend(f"-{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def _fit(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name.strip("-") or "x"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def pod_name(username: str, server_name: str = "") -> str:
    """``jupyter-<user>[--<server>]``, a DNS-1123 label (≤ 63), unique per user/server."""
    base = f"jupyter-{dns_escape(username)}"
    if server_name:
        base += f"--{dns_escape(server_name)}"
    return _fit(base, 63)


def home_claim_name(username: str) -> str:
    return _fit(f"home-{dns_escape(username)}", 63)


def label_value(value: str) -> str:
    """A valid label value (≤ 63, ``[A-Za-z0-9-_.]``, alphanumeric ends)."""
    out = "".join(ch if ch in _LABEL_SAFE else f"-{ord(ch):x}-" for ch in value)
    if len(out) > 63:
        out = f"{out[:54]}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return out.strip("-_.")

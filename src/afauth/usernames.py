"""Safe hub names from the stable identifiers IdPs give us.

A hub name ends up in URLs, Kubernetes object names and labels, and paths on shared storage,
so it is kept to lower-case ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a
letter or digit, and at most ``max_length`` characters. Other printable ASCII punctuation
(``@``, ``+``, ``'``, ...) becomes ``-``; runs of separators collapse. Anything that is not
plain ASCII is *refused*, not transliterated: full-width letters, homoglyphs, zero-width and
bidi characters would otherwise let two people reach the same name. Over-long identifiers
are refused rather than truncated, for the same reason.
"""

from __future__ import annotations

import re

from afauth.errors import AuthFailure

DEFAULT_MAX_LENGTH = 48
MAX_INPUT_LENGTH = 256

_SAFE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


def username_problem(raw: object, *, max_length: int = DEFAULT_MAX_LENGTH) -> str | None:
    """Why ``raw`` cannot become a hub name, or ``None``."""
    if not isinstance(raw, str) or not raw:
        return "the identity provider gave no usable user name"
    if len(raw) > MAX_INPUT_LENGTH:
        return f"the user name from the identity provider is too long ({len(raw)} characters)"
    if not raw.isascii():
        return "the user name contains non-ASCII characters, which this hub does not accept"
    if not _PRINTABLE.fullmatch(raw):
        return "the user name contains spaces or control characters"
    return None


def normalise_username(raw: object, *, max_length: int = DEFAULT_MAX_LENGTH) -> str:
    """``raw`` as a safe hub name, or :class:`AuthFailure` with the reason."""
    problem = username_problem(raw, max_length=max_length)
    if problem is None:
        assert isinstance(raw, str)
        name = raw.lower()
        name = re.sub(r"[^a-z0-9._-]", "-", name)
        name = re.sub(r"[._-]*-[._-]*", "-", name)  # a replaced char absorbs its neighbours
        name = re.sub(r"\.{2,}", ".", name).strip("._-")
        if not name:
            problem = "the user name has no letters or digits"
        elif len(name) > max_length:
            problem = f"the user name is longer than {max_length} characters"
        elif not _SAFE.fullmatch(name):  # pragma: no cover - guaranteed by the substitutions
            problem = "the user name is not a safe hub name"
        else:
            return name
    raise AuthFailure(
        f"Cannot sign you in: {problem}. Contact the facility administrators.",
        detail=f"username refused: {problem}",
    )


def is_safe_username(name: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> bool:
    return len(name) <= max_length and bool(_SAFE.fullmatch(name))

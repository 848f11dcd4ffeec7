"""Sign-in secrets out of the hub's logs.

JupyterHub logs every redirect with its target (``302 GET /hub/login/iam -> https://idp/
authorize?...``) and scrubs only query parameters named like ``token``, ``auth``, ``key``,
``code`` or ``state``: the OIDC ``nonce`` would be logged in clear. :class:`ScrubFilter`
replaces the values of sign-in parameters in any record of the loggers it is installed on.
"""

from __future__ import annotations

import logging
import re

#: Query parameters whose values never reach a log line.
SECRET_PARAMS = (
    "nonce",
    "state",
    "code",
    "code_challenge",
    "code_verifier",
    "id_token_hint",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "password",
)
_PARAM = re.compile(r"(?i)([?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&;#\s\"'<>]+")
#: The hub's loggers that print URLs: tornado's access log (JupyterHub's ``log_request``).
LOGGERS = ("tornado.access", "tornado.application", "tornado.general")


def scrub(text: str) -> str:
    """``text`` with the values of :data:`SECRET_PARAMS` query parameters replaced."""
    return _PARAM.sub(r"\1[secret]", text)


class ScrubFilter(logging.Filter):
    """Rewrites a record whose message carries a sign-in parameter (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: let logging report it as usual
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def install(*names: str) -> None:
    """Add a :class:`ScrubFilter` to the loggers ``names`` (default :data:`LOGGERS`); once."""
    for name in names or LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ScrubFilter) for f in logger.filters):
            logger.addFilter(ScrubFilter())

"""Which (IdP, subject) owns each hub user name: a small SQLite file next to the hub database.

Why a separate file and not auth_state: auth_state is encrypted with JUPYTERHUB_CRYPT_KEY and
is lost when the key is rotated or lost, and it disappears with the hub user. A binding must
outlive both: a name, once given to a person, is never silently handed to someone else who
reaches the same name through another IdP (GHSA-r7v4-jwx9-wx43), even after the hub user was
deleted. Operators list and release bindings with::

    python -m afauth.bindings --db /srv/jupyterhub/afauth-bindings.sqlite list
    python -m afauth.bindings --db ... unbind alice

Every call runs in a thread (``asyncio.to_thread``); the hub loop never waits on the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    username TEXT PRIMARY KEY,
    idp      TEXT NOT NULL,
    subject  TEXT NOT NULL,
    created  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bindings_identity ON bindings (idp, subject);
"""


@dataclass(frozen=True)
class Binding:
    username: str
    idp: str
    subject: str
    created: float

    def owns(self, idp: str, subject: str) -> bool:
        return (self.idp, self.subject) == (idp, subject)


class BindingStore:
    """Bindings in the SQLite file ``path`` (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ready = False

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            if not self._ready:
                conn.executescript(SCHEMA)
                self._ready = True
            yield conn
        finally:
            conn.close()

    # -- synchronous API (threads, CLI) --------------------------------------------------------

    def get_sync(self, username: str) -> Binding | None:
        with self._db() as db:
            row = db.execute(
                "SELECT username, idp, subject, created FROM bindings WHERE username = ?",
                (username,),
            ).fetchone()
        return Binding(*row) if row else None

    def find_sync(self, idp: str, subject: str) -> list[Binding]:
        with self._db() as db:
            rows = db.execute(
                "SELECT username, idp, subject, created FROM bindings"
                " WHERE idp = ? AND subject = ? ORDER BY created",
                (idp, subject),
            ).fetchall()
        return [Binding(*row) for row in rows]

    def claim_sync(self, username: str, idp: str, subject: str) -> Binding:
        """Bind ``username`` to (idp, subject) unless already bound; return the binding."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR IGNORE INTO bindings (username, idp, subject, created)"
                    " VALUES (?, ?, ?, ?)",
                    (username, idp, subject, time.time()),
                )
                row = db.execute(
                    "SELECT username, idp, subject, created FROM bindings WHERE username = ?",
                    (username,),
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return Binding(*row)

    def unbind_sync(self, username: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM bindings WHERE username = ?", (username,)).rowcount > 0

    def all_sync(self) -> list[Binding]:
        with self._db() as db:
            rows = db.execute(
                "SELECT username, idp, subject, created FROM bindings ORDER BY username"
            ).fetchall()
        return [Binding(*row) for row in rows]

    # -- async API (hub) -----------------------------------------------------------------------

    async def get(self, username: str) -> Binding | None:
        return await asyncio.to_thread(self.get_sync, username)

    async def find(self, idp: str, subject: str) -> list[Binding]:
        return await asyncio.to_thread(self.find_sync, idp, subject)

    async def claim(self, username: str, idp: str, subject: str) -> Binding:
        return await asyncio.to_thread(self.claim_sync, username, idp, subject)

    async def unbind(self, username: str) -> bool:
        return await asyncio.to_thread(self.unbind_sync, username)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m afauth.bindings", description="List or release hub user name bindings."
    )
    parser.add_argument("--db", required=True, help="path of afauth-bindings.sqlite")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every binding")
    unbind = sub.add_parser("unbind", help="release a name (its next login binds it again)")
    unbind.add_argument("username")
    args = parser.parse_args(argv)
    store = BindingStore(args.db)
    if args.command == "list":
        for b in store.all_sync():
            stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(b.created))
            print(f"{b.username}\t{b.idp}\t{b.subject}\t{stamp}Z")
        return 0
    if store.unbind_sync(args.username):
        print(f"released {args.username}")
        return 0
    print(f"{args.username} is not bound", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""The benchmark's database: create it fresh, migrate, add a user, count writes, read results.

Writes are counted by row triggers that this script adds to its own throwaway database (the app
is not changed): every INSERT or UPDATE of a `chat_*` row appends one row to `bench_writes`,
tagged with the message (or conversation) it belongs to. On PostgreSQL the statistics view
`pg_stat_user_tables` gives a cross-check.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.procs import PYTHON, Settings, run_checked

USERNAME = "bench"
PASSWORD = "bench-password-123"  # noqa: S105 - a throwaway account in a throwaway database

TABLES = ("chat_conversation", "chat_message", "chat_step")

# Per table: the id the row belongs to, and the text bytes one write of it stores.
_TRACKED = {
    "chat_conversation": ("NEW.id", "0"),
    "chat_message": ("NEW.id", "octet_length(NEW.text)"),
    "chat_step": ("NEW.message_id", "octet_length(NEW.reasoning) + octet_length(NEW.content)"),
}


def _pg_triggers() -> str:
    sql = [
        "CREATE TABLE bench_writes (id bigserial PRIMARY KEY, tbl text, op text, ref text,"
        " bytes bigint);"
    ]
    for table, (ref, size) in _TRACKED.items():
        sql.append(
            f"CREATE FUNCTION bench_log_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"INSERT INTO bench_writes (tbl, op, ref, bytes) "
            f"VALUES (TG_TABLE_NAME, TG_OP, {ref}::text, {size}); RETURN NULL; END $$;"
        )
        sql.append(
            f"CREATE TRIGGER bench_w AFTER INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION bench_log_{table}();"
        )
    return "\n".join(sql)


def _sqlite_triggers() -> str:
    sql = [
        "CREATE TABLE bench_writes (id INTEGER PRIMARY KEY, tbl TEXT, op TEXT, ref TEXT,"
        " bytes INTEGER);"
    ]
    for table, (ref, size) in _TRACKED.items():
        size = size.replace("octet_length(NEW.", "length(CAST(NEW.").replace(")", " AS BLOB))")
        for op in ("INSERT", "UPDATE"):
            sql.append(
                f"CREATE TRIGGER bench_{table}_{op.lower()} AFTER {op} ON {table} BEGIN "
                f"INSERT INTO bench_writes (tbl, op, ref, bytes) "
                f"VALUES ('{table}', '{op}', {ref}, {size}); END;"
            )
    return "\n".join(sql)


def _hex(value: Any) -> str:
    return str(value).replace("-", "")


def _epoch(value: Any) -> float | None:
    """A timestamp from either backend (SQLite: naive UTC text; PostgreSQL: aware datetime)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


class Database:
    """Direct SQL access to the app's database (SQLite file or PostgreSQL)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _pg(self, dbname: str | None = None) -> Any:
        import psycopg

        url = self.settings.pg_url
        if dbname is not None:
            url = url.rsplit("/", 1)[0] + "/" + dbname
        return psycopg.connect(url, autocommit=True)

    def create(self) -> None:
        """A fresh database, migrated, with the bench user and the write-counting triggers."""
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if s.postgres:
            name = s.pg_url.rsplit("/", 1)[1]
            with self._pg("postgres") as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{name}"')
        if s.redis:
            import redis

            client = redis.Redis.from_url(s.redis_url)
            client.flushdb()
            client.close()
        env = s.env()
        run_checked([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], env, "migrate")
        env["DJANGO_SUPERUSER_PASSWORD"] = PASSWORD
        run_checked(
            [PYTHON, "manage.py", "createsuperuser", "--noinput", "--username", USERNAME]
            + ["--email", "bench@example.invalid"],
            env,
            "createsuperuser",
        )
        if s.postgres:
            with self._pg() as conn:
                conn.execute(_pg_triggers())
        else:
            with sqlite3.connect(s.sqlite_path) as conn:
                conn.executescript(_sqlite_triggers())

    def drop(self) -> None:
        if self.settings.postgres:
            name = self.settings.pg_url.rsplit("/", 1)[1]
            with self._pg("postgres") as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.settings.postgres:
            with self._pg() as conn:
                return list(conn.execute(sql.replace("?", "%s"), params).fetchall())
        conn = sqlite3.connect(f"file:{self.settings.sqlite_path}?mode=ro", uri=True, timeout=30)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()

    def messages(self, conversations: list[str]) -> dict[str, MessageRow]:
        """The assistant messages of these conversations, by short id (first 12 hex digits)."""
        wanted = {_hex(c) for c in conversations}
        rows = self.query(
            "SELECT id, conversation_id, reply_to_id, status, seq, completion_tokens, "
            "reasoning_tokens, text, error_kind, error_message, created_at FROM chat_message "
            "WHERE role = 'assistant'"
        )
        found: dict[str, MessageRow] = {}
        for row in rows:
            if _hex(row[1]) not in wanted:
                continue
            m = MessageRow(
                id=_hex(row[0]),
                conversation=_hex(row[1]),
                reply_to=_hex(row[2]),
                status=row[3],
                seq=row[4],
                completion_tokens=row[5],
                reasoning_tokens=row[6],
                text_bytes=len((row[7] or "").encode()),
                reasoning_bytes=0,
                error=f"{row[8]}: {row[9]}" if row[8] else "",
                created_at=_epoch(row[10]),
            )
            found[m.id[:12]] = m
        by_id = {m.id: m for m in found.values()}
        steps = self.query(
            "SELECT message_id, reasoning, started_at, first_reasoning_at, finished_at "
            'FROM chat_step ORDER BY message_id, "index"'
        )
        for message_id, reasoning, started, first_reasoning, finished in steps:
            owner = by_id.get(_hex(message_id))
            if owner is not None:
                owner.reasoning_bytes += len((reasoning or "").encode())
                if owner.step_started_at is None:
                    owner.step_started_at = _epoch(started)
                    owner.first_reasoning_at = _epoch(first_reasoning)
                owner.finished_at = _epoch(finished)
        writes = self.query("SELECT tbl, op, ref, bytes FROM bench_writes")
        counts: dict[str, dict[str, int]] = {}
        stored: dict[str, int] = {}
        for tbl, op, ref, size in writes:
            stored[_hex(ref)] = stored.get(_hex(ref), 0) + (size or 0)
            bucket = counts.setdefault(_hex(ref), {})
            key = f"{tbl}.{op}"
            bucket[key] = bucket.get(key, 0) + 1
        for m in found.values():
            own = counts.get(m.id, {})
            m.writes_assistant = sum(own.values())
            m.writes_detail = dict(own)
            m.bytes_written = stored.get(m.id, 0)
            user = counts.get(m.reply_to, {})
            conv = counts.get(m.conversation, {})
            # Per send: the user message, the conversation's title/updated_at, the answer.
            m.writes_send = (
                m.writes_assistant + sum(user.values()) + conv.get("chat_conversation.UPDATE", 0)
            )
        return found

    def pg_table_writes(self) -> dict[str, dict[str, int]]:
        """Cumulative inserted/updated rows per chat table (PostgreSQL statistics)."""
        if not self.settings.postgres:
            return {}
        with self._pg() as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            rows = conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_user_tables "
                "WHERE relname = ANY(%s)",
                (list(TABLES),),
            ).fetchall()
        return {name: {"ins": ins, "upd": upd} for name, ins, upd in rows}


@dataclass
class MessageRow:
    id: str
    conversation: str
    reply_to: str
    status: str
    seq: int
    completion_tokens: int
    reasoning_tokens: int
    text_bytes: int
    reasoning_bytes: int
    error: str
    writes_assistant: int = 0
    writes_send: int = 0
    writes_detail: dict[str, int] | None = None
    bytes_written: int = 0  # text bytes stored by the answer's row writes (all checkpoints)
    created_at: float | None = None
    step_started_at: float | None = None
    first_reasoning_at: float | None = None
    finished_at: float | None = None

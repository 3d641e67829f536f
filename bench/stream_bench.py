#!/usr/bin/env python
"""Streaming benchmark: Glassbox end to end, over real processes and sockets.

Starts the offline model server and one daphne process (fresh database: SQLite in a temporary
GLASSBOX_DATA_DIR, or PostgreSQL/Redis with --postgres/--redis), logs in over HTTP and, like a
browser, opens a conversation's WebSocket and POSTs a message. It measures, from the client:

  ttfr     time from the POST to the first frame with reasoning, against a direct `openai` SDK
           client on the same model server (time to the first chunk with reasoning_content);
  load     N concurrent conversations at 20 tokens/s: gaps between a message's frames, lost and
           duplicated sequence numbers, delivered tokens/s, CPU and peak RSS of each process;
  wire     bytes on the WebSocket for a 50,000-token message relative to its text;
  writes   database rows written per message, for messages of different lengths that stream
           for the same time (row triggers in the benchmark's own database count them).

    .venv/bin/python bench/stream_bench.py                # the full run (< 10 minutes)
    .venv/bin/python bench/stream_bench.py --quick        # smoke run (about a minute)
    .venv/bin/python bench/stream_bench.py --postgres --redis --only writes,load --n 1,200

Results: a table on stdout and JSON (plus the children's logs) under bench/results/.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.client import Session, Watch, first_reasoning_chunk, receive  # noqa: E402
from bench.db import Database, MessageRow  # noqa: E402
from bench.procs import Meter, Settings, Stack, stop_all  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GAP_TARGET_S = 0.5
TTFR_TARGET_MS = 25.0
WIRE_TARGET = 3.0


# --- small statistics --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (numpy's default); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


SEGMENTS = (
    ("post_to_message_created", "request handling up to the INSERT of the answer row"),
    ("created_to_step_started", "commit, runner start (load_turn, channel, _save_start, snapshot)"),
    ("step_started_to_first_reasoning", "provider request: SDK, model server, stream parser"),
    ("first_reasoning_to_client", "coalescer flush, channel layer, consumer, WebSocket"),
)


def breakdown(items: list[tuple[Watch, MessageRow | None]]) -> dict[str, Any]:
    """Where the time to the first reasoning frame went, from the server's own timestamps
    (Message.created_at, Step.started_at, Step.first_reasoning_at; same machine clock)."""
    parts: dict[str, list[float]] = {name: [] for name, _ in SEGMENTS}
    for w, row in items:
        if (
            row is None
            or not w.t_first_reasoning
            or None in (row.created_at, row.step_started_at, row.first_reasoning_at)
        ):
            continue
        assert row.created_at and row.step_started_at and row.first_reasoning_at
        post = w.t_post + w.wall0
        parts["post_to_message_created"].append(row.created_at - post)
        parts["created_to_step_started"].append(row.step_started_at - row.created_at)
        parts["step_started_to_first_reasoning"].append(
            row.first_reasoning_at - row.step_started_at
        )
        parts["first_reasoning_to_client"].append(
            w.t_first_reasoning + w.wall0 - row.first_reasoning_at
        )
    return {
        name: {"p50": ms(pct(values, 0.5)), "p90": ms(pct(values, 0.9)), "what": what}
        for (name, what), values in ((seg, parts[seg[0]]) for seg in SEGMENTS)
    }


def fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{suffix}" if abs(value) < 100 else f"{value:,.0f}{suffix}"
    return f"{value:,}{suffix}" if isinstance(value, int) else f"{value}{suffix}"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- the machine -------------------------------------------------------------------------------


class CpuWindow:
    """Whole-machine CPU busy time over a window (100% = every core busy)."""

    def __init__(self) -> None:
        self.t0 = psutil.cpu_times()

    def busy_pct(self) -> float:
        t1 = psutil.cpu_times()
        total = sum(t1) - sum(self.t0)
        idle = (t1.idle + getattr(t1, "iowait", 0.0)) - (
            self.t0.idle + getattr(self.t0, "iowait", 0.0)
        )
        return 100.0 * (total - idle) / total if total > 0 else 0.0


def source() -> dict[str, Any]:
    """Which code was measured: the commit and how many files differ from it."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            result = subprocess.run(
                ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain")
    return {
        "root": str(ROOT),
        "commit": commit or "unknown (not a git checkout)",
        "changed_files": len(changed.splitlines()) if commit else None,
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def other_cpu(busy_pct: float, usage: dict[str, Any]) -> float:
    """CPU% (of one core) used by processes other than ours during the window."""
    wall = usage["client"]["wall_s"]
    ours = sum(u["cpu_s"] for u in usage.values())
    cores = os.cpu_count() or 1
    return round(max(0.0, busy_pct * cores - 100.0 * ours / wall) if wall else 0.0, 1)


async def wait_idle(cfg: Config) -> None:
    """Wait (up to cfg.wait_idle seconds) until other processes leave the machine nearly idle."""
    if cfg.wait_idle <= 0:
        return
    deadline = time.monotonic() + cfg.wait_idle
    psutil.cpu_percent()
    while True:
        await asyncio.sleep(2)
        busy = psutil.cpu_percent()  # % of all cores, since the previous call
        if busy <= cfg.idle_pct or time.monotonic() > deadline:
            if busy > cfg.idle_pct:
                print(f"  (machine still {busy:.0f}% busy after waiting; going ahead)", flush=True)
            return


# --- scenarios ---------------------------------------------------------------------------------


@dataclass
class Config:
    settings: Settings
    db: Database
    rate: float
    coalesce_ms: int | None
    setup_concurrency: int
    send_concurrency: int
    wait_idle: float = 0.0
    idle_pct: float = 15.0

    def env(self, coalesce_ms: int | None = None) -> dict[str, str]:
        value = coalesce_ms if coalesce_ms is not None else self.coalesce_ms
        return {} if value is None else {"GLASSBOX_COALESCE_MS": str(value)}


async def gather_limited(limit: int, coros: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def scenario_ttfr(cfg: Config, samples: int, warmup: int) -> dict[str, Any]:
    """Sequential messages, alternating Glassbox (POST to first reasoning frame) and the SDK."""
    import openai

    text = "Time to first thought, probe {i} !think:20 !words:10 !rate:200"
    await wait_idle(cfg)
    stack = Stack(cfg.settings, "ttfr", rate=cfg.rate, env=cfg.env()).start()
    session = Session(stack.base_url)
    sdk = openai.AsyncOpenAI(base_url=stack.model_url, api_key="bench", max_retries=0)
    watches: list[Watch] = []
    sdk_ms: list[float] = []
    sdk_cold: float | None = None
    failures: list[str] = []
    try:
        await session.login()
        meters = {"daphne": Meter(stack.web.pid), "offline_server": Meter(stack.model.pid)}  # type: ignore[union-attr]
        me = Meter(os.getpid())
        for m in (*meters.values(), me):
            m.start()
        cpu = CpuWindow()
        for i in range(warmup + samples):
            # Glassbox, as a browser: open the page's socket, then send.
            conversation = await session.new_conversation()
            ws = await session.open_socket(conversation)
            watch = Watch(conversation)
            receiver = asyncio.create_task(receive(ws, watch))
            await session.send(watch, text.format(i=i))
            try:
                await asyncio.wait_for(receiver, 60)
            except TimeoutError:
                failures.append(f"glassbox probe {i}: no final frame within 60 s")
            await ws.close()
            watches.append(watch)
            if not watch.t_first_reasoning:
                failures.append(f"glassbox probe {i}: no reasoning frame ({watch.closed_early})")
            # The same request straight to the model server through the openai SDK.
            t0 = time.perf_counter()
            first = 0.0
            stream = await sdk.chat.completions.create(
                model="kimi-k2-thinking",
                messages=[{"role": "user", "content": text.format(i=i)}],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=200000,
                temperature=1.0,
            )
            async for chunk in stream:
                if not first and first_reasoning_chunk(chunk):
                    first = time.perf_counter()
            if not first:
                failures.append(f"sdk probe {i}: no reasoning chunk")
            elif i == 0:
                sdk_cold = (first - t0) * 1000
            elif i >= warmup:
                sdk_ms.append((first - t0) * 1000)
        usage = {name: m.stop().as_dict() for name, m in meters.items()}
        usage["client"] = me.stop().as_dict()
        busy = cpu.busy_pct()
        rows = cfg.db.messages([w.conversation for w in watches])
    finally:
        await sdk.close()
        await session.aclose()
        problems = stack.log_problems()
        stack.stop()
    measured = [(w, rows.get(w.short)) for w in watches[warmup:]]
    app_ms = [(w.t_first_reasoning - w.t_post) * 1000 for w, _ in measured if w.t_first_reasoning]
    post_ms = [(w.t_post_done - w.t_post) * 1000 for w, _ in measured if w.t_post_done]
    cold = watches[0] if watches else None
    result: dict[str, Any] = {
        "samples": samples,
        "warmup": warmup,
        "message": text,
        "glassbox_ms": {
            "p50": pct(app_ms, 0.5),
            "p90": pct(app_ms, 0.9),
            "min": min(app_ms, default=None),
        },
        "sdk_ms": {
            "p50": pct(sdk_ms, 0.5),
            "p90": pct(sdk_ms, 0.9),
            "min": min(sdk_ms, default=None),
        },
        "post_response_ms": {"p50": pct(post_ms, 0.5), "p90": pct(post_ms, 0.9)},
        "glassbox_breakdown_ms": breakdown(measured),
        "cold_first_message_ms": {
            "glassbox": (cold.t_first_reasoning - cold.t_post) * 1000
            if cold and cold.t_first_reasoning
            else None,
            "sdk": sdk_cold,
        },
        "raw_glassbox_ms": [round(v, 2) for v in app_ms],
        "raw_sdk_ms": [round(v, 2) for v in sdk_ms],
        "failures": failures,
        "usage": usage,
        "machine_busy_pct_of_all_cores": round(busy, 1),
        "other_processes_cpu_pct_of_one_core": other_cpu(busy, usage),
        "log_problems": problems[:50],
    }
    g50, s50 = result["glassbox_ms"]["p50"], result["sdk_ms"]["p50"]
    g90, s90 = result["glassbox_ms"]["p90"], result["sdk_ms"]["p90"]
    result["overhead_ms"] = {
        "p50": None if g50 is None or s50 is None else g50 - s50,
        "p90": None if g90 is None or s90 is None else g90 - s90,
    }
    result["met"] = result["overhead_ms"]["p50"] is not None and (
        result["overhead_ms"]["p50"] <= TTFR_TARGET_MS
    )
    return result


async def run_streams(
    cfg: Config,
    name: str,
    texts: list[tuple[str, str]],
    *,
    rate: float,
    expect_s: float,
    keep_frames: bool = False,
    coalesce_ms: int | None = None,
) -> dict[str, Any]:
    """One fresh stack; one conversation per text, all streaming at once; results by label."""
    await wait_idle(cfg)
    stack = Stack(cfg.settings, name, rate=rate, env=cfg.env(coalesce_ms))
    pg_before = cfg.db.pg_table_writes()
    stack.start()
    session = Session(stack.base_url)
    sockets: list[Any] = []
    watches: list[Watch] = []
    receivers: list[asyncio.Task[None]] = []
    timed_out = 0
    try:
        t_setup = time.perf_counter()
        await session.login()
        # One short message first, so that cold-start costs (first template renders, first
        # provider connection) are not charged to the measured messages.
        warm = Watch(await session.new_conversation())
        warm_ws = await session.open_socket(warm.conversation)
        warm_task = asyncio.create_task(receive(warm_ws, warm))
        await session.send(warm, "warm-up !think:5 !words:5 !rate:0")
        await asyncio.wait_for(warm_task, 60)
        await warm_ws.close()
        conversations = await gather_limited(
            cfg.setup_concurrency, [session.new_conversation() for _ in texts]
        )
        sockets = await gather_limited(
            cfg.setup_concurrency, [session.open_socket(c) for c in conversations]
        )
        watches = [Watch(c, keep_frames=keep_frames) for c in conversations]
        receivers = [
            asyncio.create_task(receive(ws, w)) for ws, w in zip(sockets, watches, strict=True)
        ]
        setup_s = time.perf_counter() - t_setup
        meters = {"daphne": Meter(stack.web.pid), "offline_server": Meter(stack.model.pid)}  # type: ignore[union-attr]
        me = Meter(os.getpid())
        for m in (*meters.values(), me):
            m.start()
        cpu = CpuWindow()

        async def sampler() -> None:
            while True:
                await asyncio.sleep(0.5)
                for m in meters.values():
                    m.sample()

        sampling = asyncio.create_task(sampler())
        t0 = time.perf_counter()
        await gather_limited(
            cfg.send_concurrency,
            [session.send(w, text) for w, (_, text) in zip(watches, texts, strict=True)],
        )
        send_s = time.perf_counter() - t0
        done, pending = await asyncio.wait(receivers, timeout=expect_s * 3 + 60)
        timed_out = len(pending)
        for task in pending:
            task.cancel()
        window_s = time.perf_counter() - t0
        sampling.cancel()
        usage = {n: m.stop().as_dict() for n, m in meters.items()}
        usage["client"] = me.stop().as_dict()
        machine_busy = cpu.busy_pct()
        rows = cfg.db.messages([*conversations, warm.conversation])
        warm_row = rows.get(warm.short)
        alive = stack.alive()
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await session.aclose()
        problems = stack.log_problems()
        stack.stop()
    pg_after = cfg.db.pg_table_writes()
    groups: dict[str, list[tuple[Watch, MessageRow | None]]] = {}
    for w, (label, _) in zip(watches, texts, strict=True):
        groups.setdefault(label, []).append((w, rows.get(w.short)))
    result: dict[str, Any] = {
        "name": name,
        "conversations": len(texts),
        "rate": rate,
        "coalesce_ms": coalesce_ms if coalesce_ms is not None else cfg.coalesce_ms or 100,
        "setup_s": round(setup_s, 2),
        "send_s": round(send_s, 2),
        "window_s": round(window_s, 2),
        "timed_out": timed_out,
        "processes_alive_at_end": alive,
        "usage": usage,
        "machine_busy_pct_of_all_cores": round(machine_busy, 1),
        "other_processes_cpu_pct_of_one_core": other_cpu(machine_busy, usage),
        "groups": {label: summarize(items) for label, items in groups.items()},
        "log_problems": problems[:50],
        "log_problem_count": len(problems),
    }
    if pg_before or pg_after:
        delta = {
            t: {
                k: pg_after.get(t, {}).get(k, 0) - pg_before.get(t, {}).get(k, 0)
                for k in ("ins", "upd")
            }
            for t in pg_after
        }
        rows_written = (
            delta.get("chat_message", {}).get("ins", 0)
            + delta.get("chat_message", {}).get("upd", 0)
            + delta.get("chat_step", {}).get("ins", 0)
            + delta.get("chat_step", {}).get("upd", 0)
            + delta.get("chat_conversation", {}).get("upd", 0)
            - (warm_row.writes_send if warm_row else 0)
        )
        result["pg_stat_delta"] = delta
        result["pg_stat_rows_per_send"] = round(rows_written / max(1, len(texts)), 2)
    if keep_frames:
        result["wire_breakdown"] = {label: wire_breakdown(items) for label, items in groups.items()}
    return result


def concurrency(watches: list[Watch]) -> dict[str, Any]:
    """How many messages were really streaming at once (first reasoning frame to final frame):
    the peak, and the share of the run during which all of them streamed together."""
    spans = [(w.t_first_reasoning, w.t_final) for w in watches if w.t_first_reasoning and w.t_final]
    if not spans:
        return {"peak": 0, "all_together_s": 0.0}
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    together = min(b for _, b in spans) - max(a for a, _ in spans)
    return {"peak": peak, "all_together_s": round(max(0.0, together), 2)}


def summarize(items: list[tuple[Watch, MessageRow | None]]) -> dict[str, Any]:
    watches = [w for w, _ in items]
    gaps = [g for w in watches for g in w.gaps]
    ttfr = [w.t_first_reasoning - w.t_post for w in watches if w.t_first_reasoning]
    statuses: dict[str, int] = {}
    tokens = 0
    text_bytes = 0
    writes_a: list[int] = []
    stored: list[int] = []
    writes_s: list[int] = []
    per_msg_rate: list[float] = []
    durations: list[float] = []
    missing_tail = 0
    errors: list[str] = []
    for w, row in items:
        if row is None:
            statuses["(not found)"] = statuses.get("(not found)", 0) + 1
            continue
        statuses[row.status] = statuses.get(row.status, 0) + 1
        if row.error:
            errors.append(row.error)
        tokens += row.completion_tokens
        text_bytes += row.text_bytes + row.reasoning_bytes
        writes_a.append(row.writes_assistant)
        stored.append(row.bytes_written)
        writes_s.append(row.writes_send)
        # Frames the database says were published but this client never saw at the end.
        missing_tail += max(0, row.seq - w.last_seq)
        if w.t_final and w.t_first_reasoning:
            duration = w.t_final - w.t_first_reasoning
            durations.append(duration)
            if duration > 0:
                per_msg_rate.append(row.completion_tokens / duration)
    finals = [w.t_final for w in watches if w.t_final]
    starts = [w.t_first_reasoning for w in watches if w.t_first_reasoning]
    span = (max(finals) - min(starts)) if finals and starts else 0.0
    wire = sum(w.wire_bytes for w in watches)
    posts = [w.t_post_done - w.t_post for w in watches if w.t_post_done]
    n = len(items)
    return {
        "messages": n,
        "complete": sum(
            1 for w, r in items if w.t_final and r is not None and r.status == "complete"
        ),
        "statuses": statuses,
        "concurrent_streams": concurrency(watches),
        "errors": errors[:10],
        "closed_early": [w.closed_early for w in watches if w.closed_early][:10],
        "post_ms": {"p50": ms(pct(posts, 0.5)), "p99": ms(pct(posts, 0.99))},
        "ttfr_ms": {
            "p50": ms(pct(ttfr, 0.5)),
            "p90": ms(pct(ttfr, 0.9)),
            "max": ms(max(ttfr, default=None)),
        },
        "gap_ms": {
            "count": len(gaps),
            "p50": ms(pct(gaps, 0.5)),
            "p90": ms(pct(gaps, 0.9)),
            "p99": ms(pct(gaps, 0.99)),
            "max": ms(max(gaps, default=None)),
        },
        "lost": sum(w.lost for w in watches) + missing_tail,
        "lost_detail": {
            "mid_stream": sum(w.lost for w in watches),
            "at_end": missing_tail,
            "examples": [(w.short, w.lost_at[:3], w.frames) for w in watches if w.lost_at][:5],
        },
        "duplicated": sum(w.duplicated for w in watches),
        "snapshots": sum(w.snapshots for w in watches),
        "frames_per_message": round(sum(w.frames for w in watches) / max(1, n), 1),
        "completion_tokens": tokens,
        "tokens_per_s_aggregate": round(tokens / span, 1) if span > 0 else None,
        "tokens_per_s_per_message_mean": round(sum(per_msg_rate) / len(per_msg_rate), 2)
        if per_msg_rate
        else None,
        "stream_s_mean": round(sum(durations) / len(durations), 2) if durations else None,
        "wire_bytes_per_message": round(wire / max(1, n)),
        "text_bytes_per_message": round(text_bytes / max(1, n)),
        "wire_to_text": round(wire / text_bytes, 3) if text_bytes else None,
        "db_rows_written_per_message": {
            "assistant_message_and_steps": round(sum(writes_a) / len(writes_a), 2)
            if writes_a
            else None,
            "per_send_incl_user_message_and_conversation": round(sum(writes_s) / len(writes_s), 2)
            if writes_s
            else None,
            "min": min(writes_s, default=None),
            "max": max(writes_s, default=None),
            "per_stream_second": round(sum(writes_s) / sum(durations), 2)
            if durations and writes_s
            else None,
        },
        "db_text_bytes_written_per_message": round(sum(stored) / len(stored)) if stored else None,
        "db_text_bytes_written_to_final_text": round(sum(stored) / text_bytes, 2)
        if text_bytes and stored
        else None,
        "db_rows_detail_example": items[0][1].writes_detail if items and items[0][1] else None,
        "ttfr_breakdown_ms": breakdown(items),
    }


def wire_breakdown(items: list[tuple[Watch, MessageRow | None]]) -> dict[str, Any]:
    """Where the bytes of the kept frames went, as multiples of the message's text."""
    header = re.compile(rb"^<!--gb:[^>]*-->")
    reasoning = re.compile(rb'<span id="r-[^"]+" hx-swap-oob="beforeend">([^<]*)</span>')
    blocks = re.compile(
        rb'<div id="b-[0-9a-f]+" hx-swap-oob="beforeend">(.*?)</div>'
        rb'<span id="t-[0-9a-f]+" hx-swap-oob="innerHTML">([^<]*)</span>',
        re.S,
    )
    appended = re.compile(rb'<span id="t-[0-9a-f]+" hx-swap-oob="beforeend">([^<]*)</span>')
    parts = {
        "frame_headers": 0,
        "reasoning_text": 0,
        "answer_tail_appended": 0,
        "answer_blocks_html": 0,
        "answer_tail_resent": 0,
        "markup_and_other": 0,
        "websocket_framing": 0,
    }
    text = 0
    for w, row in items:
        if row is not None:
            text += row.text_bytes + row.reasoning_bytes
        for frame in w.raw:
            size = len(frame)
            parts["websocket_framing"] += 2 if size < 126 else 4 if size < 65536 else 10
            found = header.match(frame)
            content = len(found.group()) if found else 0
            parts["frame_headers"] += content
            for m in reasoning.finditer(frame):
                parts["reasoning_text"] += len(m.group(1))
                content += len(m.group(1))
            for m in blocks.finditer(frame):
                parts["answer_blocks_html"] += len(m.group(1))
                parts["answer_tail_resent"] += len(m.group(2))
                content += len(m.group(1)) + len(m.group(2))
            for m in appended.finditer(frame):
                parts["answer_tail_appended"] += len(m.group(1))
                content += len(m.group(1))
            parts["markup_and_other"] += size - content
    total = sum(parts.values())
    return {
        "text_bytes": text,
        "wire_bytes": total,
        "bytes": parts,
        "x_text": {k: round(v / text, 3) for k, v in parts.items()} if text else {},
    }


# --- the run -----------------------------------------------------------------------------------


def holds(group: dict[str, Any]) -> bool:
    """The load targets: every message complete, no lost or duplicated frame, gap p99 within
    the target, and the N conversations really streamed together (peak >= 90% of N)."""
    p99 = group["gap_ms"]["p99"]
    return (
        group["complete"] == group["messages"]
        and group["concurrent_streams"]["peak"] >= 0.9 * group["messages"]
        and group["lost"] == 0
        and group["duplicated"] == 0
        and p99 is not None
        and p99 <= GAP_TARGET_S * 1000
    )


async def run_all(args: argparse.Namespace, cfg: Config, out: dict[str, Any]) -> None:
    only = set(args.only.split(",")) if args.only else {"ttfr", "load", "wire", "writes"}
    quick = args.quick

    def save() -> None:
        out["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        args.json_path.write_text(json.dumps(out, indent=1))

    if "ttfr" in only:
        samples = args.ttfr_samples or (10 if quick else 30)
        print(f"\n[ttfr] {samples} sequential messages each way …", flush=True)
        out["ttfr"] = await scenario_ttfr(cfg, samples, warmup=3)
        save()
        print_ttfr(out["ttfr"])

    if "load" in only:
        think, words = (40, 60) if quick else (args.think, args.words)
        msg_rate = args.msg_rate
        expect = (think + words) / msg_rate
        text = (
            f"Tell me about streaming under load !think:{think} !words:{words} !rate:{msg_rate:g}"
        )
        ns = [int(n) for n in (args.n or ("1,20" if quick else "1,50,200,500")).split(",")]
        out["load"] = {"message": text, "expected_stream_s": expect, "runs": []}
        tokens = think + words
        print(f"\n[load] N = {ns}, {tokens} tokens at {msg_rate:g} tok/s (~{expect:.0f} s each)")
        results: dict[int, bool] = {}
        # Keep the whole run within --time-budget: time for wire and writes is set aside, and a
        # load run that would not fit (stream time, plus the sends: ~0.3 s each on 2 busy cores)
        # is skipped and reported as such.
        reserve = 40.0 * len(only & {"wire", "writes"})
        out["load"]["over_budget"] = []

        async def one(n: int, coalesce: int | None = None) -> dict[str, Any] | None:
            estimate = expect + 15 + 0.3 * n
            if time.monotonic() + estimate + reserve > args.t0 + args.time_budget:
                print(
                    f"  N = {n}: skipped, it would not fit in --time-budget {args.time_budget:g} s"
                )
                out["load"]["over_budget"].append(n)
                return None
            label = f"load-n{n}" + (f"-c{coalesce}" if coalesce is not None else "")
            run = await run_streams(
                cfg,
                label,
                [("chat", text)] * n,
                rate=cfg.rate,
                expect_s=expect,
                coalesce_ms=coalesce,
            )
            run["n"] = n
            run["holds"] = holds(run["groups"]["chat"])
            out["load"]["runs"].append(run)
            save()
            print_load_row(run)
            return run

        skipped: list[int] = []
        for n in sorted(ns):
            if args.find_max and not all(results.values()):
                skipped.append(n)  # a smaller N already missed the targets
                continue
            run = await one(n)
            if run is not None:
                results[n] = run["holds"]
        out["load"]["skipped"] = skipped
        if skipped:
            print(f"skipped N = {skipped}: a smaller N already missed the targets")
        if args.find_max and results and not all(results.values()):
            good = max((n for n, ok in results.items() if ok), default=0)
            bad = min(n for n, ok in results.items() if not ok)
            for _ in range(args.max_steps):
                mid = (good + bad) // 2
                mid = max(good + 1, mid - mid % 25 if mid > 50 else mid)
                if mid >= bad or mid <= good:
                    break
                step = await one(mid)
                if step is None:
                    break
                if step["holds"]:
                    good = mid
                else:
                    bad = mid
            out["load"]["largest_n_that_holds"] = good
            out["load"]["smallest_n_that_fails"] = bad
        if args.extra_coalesce is not None:
            # Where the default setting missed the targets, if it did: is coalescing the lever?
            failed = [n for n, ok in results.items() if not ok]
            await one(min(failed) if failed else max(ns), args.extra_coalesce)
        print_load(out["load"])

    if "wire" in only:
        words = 5000 if quick else args.wire_words
        text = f"Write a very long answer !think:100 !words:{words} !rate:{args.wire_rate:g}"
        print(
            f"\n[wire] one message of {words + 100} tokens at {args.wire_rate:g} tok/s …",
            flush=True,
        )
        run = await run_streams(
            cfg,
            "wire",
            [("long", text)],
            rate=cfg.rate,
            expect_s=(words + 100) / args.wire_rate,
            keep_frames=True,
        )
        run["message"] = text
        group = run["groups"]["long"]
        run["met"] = group["wire_to_text"] is not None and group["wire_to_text"] <= WIRE_TARGET
        out["wire"] = run
        save()
        print_wire(run)

    if "writes" in only:
        seconds = 5.0 if quick else args.writes_seconds
        lengths = [500, 2000] if quick else [1000, 10000, 50000]
        texts: list[tuple[str, str]] = []
        for tokens in lengths:
            rate = tokens / seconds
            label = f"{tokens} tokens @ {rate:g}/s"
            text = f"Length test !think:100 !words:{tokens - 100} !rate:{rate:g}"
            texts += [(label, text)] * args.writes_per_length
        print(
            f"\n[writes] {len(lengths)} lengths x {args.writes_per_length}, ~{seconds:g} s each …"
        )
        run = await run_streams(cfg, "writes", texts, rate=cfg.rate, expect_s=seconds)
        per = [
            g["db_rows_written_per_message"]["per_send_incl_user_message_and_conversation"]
            for g in run["groups"].values()
        ]
        run["spread"] = (max(per) - min(per)) if all(p is not None for p in per) else None
        out["writes"] = run
        save()
        print_writes(run)
    save()


def print_ttfr(r: dict[str, Any]) -> None:
    g, s, o = r["glassbox_ms"], r["sdk_ms"], r["overhead_ms"]
    print(
        table(
            ["path", "p50 ms", "p90 ms", "min ms"],
            [
                ["glassbox (POST -> first reasoning frame)", g["p50"], g["p90"], g["min"]],
                ["openai SDK direct (first reasoning chunk)", s["p50"], s["p90"], s["min"]],
                [f"overhead (target p50 <= {TTFR_TARGET_MS:g})", o["p50"], o["p90"], None],
            ],
        )
    )
    print("breakdown of the Glassbox time (server timestamps), p50 / p90 ms:")
    for name, v in r["glassbox_breakdown_ms"].items():
        print(f"  {name:34} {fmt(v['p50']):>7} {fmt(v['p90']):>7}   {v['what']}")
    print(
        f"cold first message on a fresh daphne: {fmt(r['cold_first_message_ms']['glassbox'])} ms "
        f"(SDK {fmt(r['cold_first_message_ms']['sdk'])} ms); "
        f"other processes used {r['other_processes_cpu_pct_of_one_core']}% of a core"
    )
    if r["failures"]:
        print("failures:", *r["failures"][:5], sep="\n  ")


LOAD_HEADERS = [
    "N",
    "peak",
    "done",
    "TTFR p50",
    "gap p50",
    "gap p99",
    "gap max",
    "lost",
    "dup",
    "tok/s agg",
    "tok/s msg",
    "daphne CPU%",
    "daphne MiB",
    "model CPU%",
    "model MiB",
    "client CPU%",
    "machine%",
    "holds",
]


def load_row(run: dict[str, Any]) -> list[Any]:
    g = run["groups"]["chat"]
    u = run["usage"]
    n = f"{run['n']}" + (f" (c{run['coalesce_ms']})" if run["coalesce_ms"] != 100 else "")
    return [
        n,
        g["concurrent_streams"]["peak"],
        f"{g['complete']}/{g['messages']}",
        g["ttfr_ms"]["p50"],
        g["gap_ms"]["p50"],
        g["gap_ms"]["p99"],
        g["gap_ms"]["max"],
        g["lost"],
        g["duplicated"],
        g["tokens_per_s_aggregate"],
        g["tokens_per_s_per_message_mean"],
        u["daphne"]["cpu_pct_of_one_core"],
        u["daphne"]["rss_peak_mib"],
        u["offline_server"]["cpu_pct_of_one_core"],
        u["offline_server"]["rss_peak_mib"],
        u["client"]["cpu_pct_of_one_core"],
        run["machine_busy_pct_of_all_cores"],
        "yes" if run["holds"] else "NO",
    ]


def print_load_row(run: dict[str, Any]) -> None:
    print(table(LOAD_HEADERS, [load_row(run)]), flush=True)


def print_load(load: dict[str, Any]) -> None:
    print("\n[load] summary (times in ms; CPU% of one core; MiB = peak RSS)")
    print(table(LOAD_HEADERS, [load_row(r) for r in load["runs"]]))
    if "largest_n_that_holds" in load:
        print(f"largest N that holds: {load['largest_n_that_holds']}")


def print_wire(run: dict[str, Any]) -> None:
    g = run["groups"]["long"]
    print(
        table(
            [
                "tokens",
                "text bytes",
                "wire bytes",
                "wire/text",
                "target",
                "frames",
                "stream s",
                "status",
            ],
            [
                [
                    g["completion_tokens"],
                    g["text_bytes_per_message"],
                    g["wire_bytes_per_message"],
                    g["wire_to_text"],
                    f"<= {WIRE_TARGET:g}",
                    g["frames_per_message"],
                    g["stream_s_mean"],
                    g["statuses"],
                ]
            ],
        )
    )
    b = run["wire_breakdown"]["long"]
    print("breakdown (x text):", ", ".join(f"{k} {v}" for k, v in b["x_text"].items()))


def print_writes(run: dict[str, Any]) -> None:
    rows = []
    for label, g in run["groups"].items():
        w = g["db_rows_written_per_message"]
        rows.append(
            [
                label,
                f"{g['complete']}/{g['messages']}",
                g["completion_tokens"] // max(1, g["messages"]),
                g["stream_s_mean"],
                w["assistant_message_and_steps"],
                w["per_send_incl_user_message_and_conversation"],
                w["per_stream_second"],
                g["db_text_bytes_written_per_message"],
                g["db_text_bytes_written_to_final_text"],
            ]
        )
    print(
        table(
            [
                "message",
                "done",
                "tokens",
                "stream s",
                "rows (answer)",
                "rows (send)",
                "rows/s",
                "text bytes written",
                "x final text",
            ],
            rows,
        )
    )
    if "pg_stat_rows_per_send" in run:
        print(f"pg_stat_user_tables cross-check: {run['pg_stat_rows_per_send']} rows per send")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    p.add_argument("--only", default="", help="comma list of: ttfr,load,wire,writes")
    p.add_argument(
        "--n", default="", help="concurrent conversations for load (default 1,50,200,500)"
    )
    p.add_argument("--rate", type=float, default=20.0, help="offline server default tokens/s")
    p.add_argument("--msg-rate", type=float, default=20.0, help="tokens/s of each load message")
    p.add_argument("--think", type=int, default=100, help="reasoning tokens of a load message")
    p.add_argument("--words", type=int, default=300, help="answer tokens of a load message")
    p.add_argument(
        "--find-max",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop at the first N that misses the targets and step between it and the last "
        "N that held (--no-find-max: run every N)",
    )
    p.add_argument("--max-steps", type=int, default=2, help="extra load runs when stepping")
    p.add_argument(
        "--coalesce-ms", type=int, default=None, help="GLASSBOX_COALESCE_MS for all runs"
    )
    p.add_argument(
        "--extra-coalesce",
        type=int,
        default=None,
        help="also run the largest N with this GLASSBOX_COALESCE_MS",
    )
    p.add_argument("--ttfr-samples", type=int, default=0)
    p.add_argument("--wire-words", type=int, default=49900)
    p.add_argument("--wire-rate", type=float, default=2000.0)
    p.add_argument("--writes-seconds", type=float, default=20.0)
    p.add_argument("--writes-per-length", type=int, default=2)
    p.add_argument("--setup-concurrency", type=int, default=16)
    p.add_argument("--send-concurrency", type=int, default=16)
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each scenario wait up to this many seconds for an idle machine",
    )
    p.add_argument("--idle-pct", type=float, default=15.0, help="'idle': at most this %% busy")
    p.add_argument("--postgres", action="store_true", help="PostgreSQL at --pg-url (recreated)")
    p.add_argument("--redis", action="store_true", help="Redis channel layer at --redis-url")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/glassbox_bench")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/1")
    p.add_argument(
        "--time-budget",
        type=float,
        default=570.0,
        help="seconds for the whole run; load runs that would not fit are skipped (default 570)",
    )
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. what was run)")
    p.add_argument("--profile", action="store_true", help="run daphne under cProfile")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    p.add_argument(
        "--out", default="", help="JSON path (default bench/results/stream_bench-<time>.json)"
    )
    return p.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.json_path = Path(args.out) if args.out else RESULTS / f"stream_bench-{stamp}.json"
    data_dir = Path(tempfile.mkdtemp(prefix="glassbox-bench-"))
    settings = Settings(
        data_dir=data_dir,
        log_dir=RESULTS / f"stream_bench-{stamp}-logs",
        postgres=args.postgres,
        redis=args.redis,
        pg_url=args.pg_url,
        redis_url=args.redis_url,
        profile=args.profile,
    )
    db = Database(settings)
    cfg = Config(
        settings,
        db,
        args.rate,
        args.coalesce_ms,
        args.setup_concurrency,
        args.send_concurrency,
        args.wait_idle,
        args.idle_pct,
    )
    out: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "machine": machine(),
        "source": source(),
        "note": args.note,
        "database": "postgresql" if args.postgres else "sqlite",
        "channel_layer": "redis pubsub" if args.redis else "in-memory",
        "logs": str(settings.log_dir),
    }
    started = args.t0 = time.monotonic()
    print(
        f"Glassbox stream benchmark: {out['machine']['cpus']} CPUs, {out['database']}, "
        f"{out['channel_layer']} channel layer; JSON -> {args.json_path}",
        flush=True,
    )
    try:
        db.create()
        asyncio.run(run_all(args, cfg, out))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the children", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if args.postgres and not args.keep_data:
            db.drop()
        if args.keep_data:
            print(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
        out["elapsed_s"] = round(time.monotonic() - started, 1)
        args.json_path.write_text(json.dumps(out, indent=1))
        print(f"\nelapsed {out['elapsed_s']} s; results in {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

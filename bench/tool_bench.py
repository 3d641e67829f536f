"""Tool round trips and the 300-step loop, against the offline server and a real worker.

    .venv/bin/python bench/tool_bench.py                 # embedded broker and Redis + PostgreSQL
    .venv/bin/python bench/tool_bench.py --mode embedded # one of them
    .venv/bin/python bench/tool_bench.py --steps 100     # a shorter loop

Each mode runs in a fresh child process (settings come from the environment at start-up):
a temporary data directory, migrations, the offline model server (as fast as it can go), a
real Celery worker process, and one turn scripted as `!loop:N` over the no-op `echo` tool.

Round trip = from the end of a step that called the tool (the call is recorded and
dispatched) to the start of the next step (the result was seen by the loop): dispatch,
broker, worker, database, the loop noticing. Wall-time overhead of the loop = its wall time
minus the time spent streaming from the model. Memory = Python heap of the process running
the loop (tracemalloc) sampled as steps go by, next to the size of the stored history.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = "postgres://postgres@127.0.0.1:5432/glassbox_toolbench"
REDIS = "redis://127.0.0.1:6379/3"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def seconds(start: Any, end: Any) -> float:
    return float((end - start).total_seconds())


def wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def child(steps: int) -> dict[str, object]:
    """Runs inside the configured child process."""
    import asyncio
    import tracemalloc

    import django

    django.setup()
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.conf import settings

    from chat import actions
    from chat.models import Step, ToolCall, ToolSetting
    from chat.streaming import TurnSession
    from tests.procs import celery_worker, free_port

    # The model server runs in its own process, so the heap measured below is the loop's.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "agents.offline_server", "--port", str(port), "--rate", "0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    settings.GLASSBOX_BASE_URL = f"http://127.0.0.1:{port}/v1"
    ToolSetting.objects.update_or_create(name="echo", defaults={"enabled": True})
    user, _ = User.objects.get_or_create(username="bench")
    env = {"REDIS_URL": settings.REDIS_URL} if settings.REDIS_URL else {}
    samples: list[tuple[int, int]] = []

    async def sample_memory(message_id: Any) -> None:
        while True:
            await asyncio.sleep(0.25)
            count = await sync_to_async(ToolCall.objects.filter(message_id=message_id).count)()
            samples.append((count, tracemalloc.get_traced_memory()[0]))

    async def run(text: str) -> tuple[float, Any]:
        conversation = await sync_to_async(actions.do_create_conversation)(user)
        message = await sync_to_async(actions.do_send_message)(conversation, text)
        sampler = asyncio.create_task(sample_memory(message.id))
        started = time.perf_counter()
        await TurnSession(message.id).run()
        sampler.cancel()
        return time.perf_counter() - started, message.id

    async def both() -> tuple[float, Any, int]:
        # Warm up connections and the worker's imports, then measure.
        await run('warm-up !loop:5 !tool:echo:{"text":"x"} !think:3 !words:5')
        samples.clear()
        tracemalloc.start()
        wall, message_id = await run(
            f'Loop !loop:{steps} !tool:echo:{{"text":"noop"}} !think:3 !words:5'
        )
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return wall, message_id, peak

    with celery_worker(env, concurrency=2):
        wall, message_id, peak = asyncio.run(both())
    server.terminate()
    rows = list(Step.objects.filter(message_id=message_id).order_by("index"))
    streaming = sum(seconds(s.started_at, s.finished_at) for s in rows)
    gaps = [
        seconds(a.finished_at, b.started_at) * 1000 for a, b in zip(rows, rows[1:], strict=False)
    ]
    calls = list(ToolCall.objects.filter(message_id=message_id).order_by("step_index"))
    starts = {s.index: s.started_at for s in rows}

    def ms(pairs: list[tuple[Any, Any]]) -> float:
        return round(statistics.median(seconds(a, b) * 1000 for a, b in pairs), 1)

    breakdown = {
        "dispatch_to_start_ms_p50": ms([(c.created_at, c.started_at) for c in calls]),
        "run_ms_p50": ms([(c.started_at, c.finished_at) for c in calls]),
        "finish_to_next_step_ms_p50": ms(
            [(c.finished_at, starts[c.step_index + 1]) for c in calls if c.step_index + 1 in starts]
        ),
    }
    history_bytes = len(json.dumps([s.reasoning for s in rows]))
    early = [m for n, m in samples if steps * 0.15 <= n <= steps * 0.25]
    late = [m for n, m in samples if n >= steps * 0.85]
    growth = (
        (statistics.median(late) - statistics.median(early)) / (0.7 * steps)
        if early and late
        else None
    )
    return {
        "mode": "redis" if settings.REDIS_URL else "embedded",
        "steps": len(rows),
        "calls_done": ToolCall.objects.filter(message_id=message_id, status="done").count(),
        "round_trip_ms_p50": round(statistics.median(gaps), 1),
        "round_trip_ms_p99": round(percentile(gaps, 0.99), 1),
        **breakdown,
        "wall_s": round(wall, 2),
        "model_streaming_s": round(streaming, 2),
        "overhead_s": round(wall - streaming, 2),
        "overhead_ms_per_step": round((wall - streaming) / len(rows) * 1000, 1),
        "peak_heap_mb": round(peak / 1e6, 1),
        "heap_growth_bytes_per_step": round(growth) if growth is not None else None,
        "stored_reasoning_bytes": history_bytes,
    }


def parent(modes: list[str], steps: int) -> None:
    results = []
    for mode in modes:
        with tempfile.TemporaryDirectory() as data_dir:
            env = {
                **os.environ,
                "GLASSBOX_DATA_DIR": data_dir,
                "DJANGO_SETTINGS_MODULE": "chat.settings",
            }
            env.pop("DATABASE_URL", None)
            env.pop("REDIS_URL", None)
            if mode == "redis":
                subprocess.run(
                    [
                        "psql",
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "-q",
                        "-c",
                        "DROP DATABASE IF EXISTS glassbox_toolbench",
                        "-c",
                        "CREATE DATABASE glassbox_toolbench",
                    ],
                    check=True,
                )
                subprocess.run(["redis-cli", "-n", "3", "FLUSHDB"], check=True, capture_output=True)
                env.update(DATABASE_URL=POSTGRES, REDIS_URL=REDIS)
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--steps", str(steps)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = list(results[0])
    print(" | ".join(keys))
    for row in results:
        print(" | ".join(str(row[k]) for k in keys))
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"tool-{stamp}.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["embedded", "redis", "both"], default="both")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(child(args.steps)))
        return
    parent(["embedded", "redis"] if args.mode == "both" else [args.mode], args.steps)


if __name__ == "__main__":
    main()

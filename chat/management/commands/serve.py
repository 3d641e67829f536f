"""`manage.py serve`: everything the embedded default needs, in one command.

Migrates, creates an admin account on first run (printing its generated password once),
marks turns left streaming by a previous run as interrupted, then starts the offline model
server (when no provider is configured), a Celery worker with the sweeper, and daphne.
Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from chat.actions import do_sweep_interrupted
from chat.celery import ensure_broker_folders


class Command(BaseCommand):
    help = "Run Glassbox (web, worker and, without a provider key, the offline model server)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("GLASSBOX_HOST", "127.0.0.1"))
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("GLASSBOX_PORT", "8000"))
        )
        parser.add_argument("--no-worker", action="store_true", help="Do not start a Celery worker")

    def handle(self, *args: Any, **options: Any) -> None:
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        # The data dir holds the database and broker: nobody else on the machine reads it.
        os.chmod(settings.DATA_DIR, 0o700)
        ensure_broker_folders()
        call_command("migrate", interactive=False, verbosity=0)
        self._ensure_admin()
        swept = do_sweep_interrupted(now=None)
        if swept:
            self.stdout.write(f"Marked {swept} turn(s) from a previous run as interrupted.")
        children: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ)
        try:
            if settings.GLASSBOX_PROVIDER == "offline":
                children.append(
                    self._spawn(
                        [
                            sys.executable,
                            "-m",
                            "agents.offline_server",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(settings.GLASSBOX_OFFLINE_PORT),
                        ],
                        env,
                    )
                )
                self.stdout.write("No provider key set: using the offline simulator.")
            if not options["no_worker"]:
                children.append(
                    self._spawn(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "chat",
                            "worker",
                            "-B",
                            "--loglevel",
                            "WARNING",
                            "--concurrency",
                            "2",
                        ],
                        env,
                    )
                )
            children.append(
                self._spawn(
                    [
                        sys.executable,
                        "-m",
                        "daphne",
                        "-b",
                        options["host"],
                        "-p",
                        str(options["port"]),
                        "chat.asgi:application",
                    ],
                    env,
                )
            )
            url = f"http://{options['host']}:{options['port']}/"
            self.stdout.write(
                self.style.SUCCESS(f"Glassbox is running at {url}  (Ctrl-C stops it)")
            )
            self._wait(children)
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR)

    def _wait(self, children: list[subprocess.Popen[bytes]]) -> None:
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            return
        dead = [c for c in children if c.poll() is not None]
        for child in dead:
            self.stderr.write(f"{' '.join(map(str, child.args))} exited with {child.returncode}")  # type: ignore[arg-type]
        raise SystemExit(1)

    def _ensure_admin(self) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            return
        username = os.environ.get("GLASSBOX_ADMIN_USER", "admin")
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            self.style.WARNING(
                f"Created the admin account '{username}' with password: {password}\n"
                "This password is shown only once: keep it somewhere safe."
            )
        )

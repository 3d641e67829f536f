"""``python -m agents.offline_server``: serve until SIGINT or SIGTERM (see `main`)."""

from __future__ import annotations

from agents.offline_server import main

raise SystemExit(main())

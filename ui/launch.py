"""Start the page: loopback by default, no share links, no analytics, files served only from the workspace."""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    from sdlora.errors import SdloraError

    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SdloraError("--auth expects USER:PASSWORD, both non-empty.")
    return user, password


def launch(project: Path | None = None, host: str = "127.0.0.1", port: int | None = 7860,
           auth: tuple[str, str] | None = None, block: bool = True):
    """Build and start the app; returns it (with block=False, for tests)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from sdlora.models.loading import sdlora_home
    from ui import project as projects
    from ui.app import build_app

    if project is None:
        opened = projects.demo_project(sdlora_home())
    else:
        opened = projects.open_project(project)
    if not is_loopback(host) and auth is None:
        print(f"WARNING: serving on {host} without --auth: anyone who can reach this address can use "
              "the page and read your project files. Add --auth USER:PASSWORD.", file=sys.stderr)
    app = build_app(opened.root, workspace=opened.root.parent)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        auth=auth,
        allowed_paths=[str(opened.root.parent)],
        prevent_thread_lock=not block,
        ssr_mode=False,
        quiet=not block,
    )
    return app


def main(args) -> int:
    launch(args.project, args.host, args.port, parse_auth(args.auth), block=True)
    return 0

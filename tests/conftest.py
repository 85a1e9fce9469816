"""Shared test setup: offline hub, and a private SDLORA_HOME for built-in models and caches."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SDLORA_HOME", os.path.join(os.environ.get("TMPDIR", "/tmp"), "sdlora-test-home"))

"""The Blend tab's API through gradio_client against the app launched in-process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.blend_fixtures import write_loras
from tests.ui_helpers import make_start_project


@pytest.fixture
def app_with_adapters(tmp_path, tiny_sd15):
    from ui.launch import launch

    start = make_start_project(tmp_path / "workspace")
    paths, _ = write_loras(start / "runs" / "run1", "sd15", names=("a", "b"))
    app = launch(start, port=None, block=False)
    yield app, start, paths
    app.close()


def test_blend_tab_previews_and_saves(app_with_adapters):
    from gradio_client import Client


    app, start, paths = app_with_adapters
    client = Client(app.local_url, verbose=False)
    listed = [choice[0] for choice in client.predict(api_name="/list_blend_sources")["choices"]]
    assert set(listed) == {str(paths["a"]), str(paths["b"])}

    chosen = [str(paths["a"]), str(paths["b"])]
    image, titles = client.predict(chosen, "0.7, -0.3", "a red square", "1", 2, "svd", 6, 0,
                                   api_name="/blend_preview")
    from PIL import Image

    assert Image.open(image).size == (5 * 64, 64)
    assert "base | sd15-a x0.7 | sd15-b x-0.3 | blend 0.7 + -0.3 | as saved: svd rank 6 (error 0." in titles

    saved, report = client.predict(chosen, "0.7, -0.3", "svd", 6, 0, "mix", api_name="/blend_save")
    target = start / "blends" / "mix.safetensors"
    assert Path(saved).read_bytes() == target.read_bytes()
    assert "svd blend: 108 layers, rank 6" in report and "PASS" in report and "FAIL" not in report
    from safetensors import safe_open

    with safe_open(target, "pt") as handle:
        sources = json.loads(handle.metadata()["sdlora_blend_sources"])
    assert [(s["file"], s["weight"]) for s in sources] == [("sd15-a.safetensors", 0.7), ("sd15-b.safetensors", -0.3)]

    with pytest.raises(Exception, match="one weight per adapter"):
        client.predict(chosen, "0.7", "concat", 6, 0, "x", api_name="/blend_save")
    with pytest.raises(Exception, match="not in the list of choices"):  # gradio refuses files it did not list
        client.predict(["/etc/passwd"], "1", "concat", 6, 0, "x", api_name="/blend_save")

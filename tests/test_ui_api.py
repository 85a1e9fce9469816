"""The page's API driven by gradio_client against the app launched in-process."""
from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.config import load_config
from tests.ui_helpers import make_start_project, wait_for


@pytest.fixture
def running_app(tmp_path, tiny_sd15):
    from ui.launch import launch

    start = make_start_project(tmp_path / "workspace")
    app = launch(start, port=None, block=False)
    yield app, tmp_path / "workspace"
    app.close()


def test_create_upload_caption_train_preview_export(running_app, tmp_path):
    from gradio_client import Client, handle_file

    from sdlora.demo.shapes import DEMO_DATASETS, write_dataset

    app, workspace = running_app
    client = Client(app.local_url, verbose=False)
    new_root = workspace / "mychar"
    opened = client.predict(str(new_root), api_name="/open_project")
    assert opened[0] == str(new_root.resolve()) and (new_root / "project.toml").is_file()
    fresh = load_config(new_root / "project.toml")  # a new project starts from a real recipe, no model chosen
    assert (fresh.lora.rank, fresh.data.resolution, fresh.model.path) == (32, 512, "")
    client.predict("demo-tiny", api_name="/apply_preset")

    sources = write_dataset(tmp_path / "src", DEMO_DATASETS["demo-shapes"][:4])
    images = sorted(sources.glob("*.png"))
    gallery, tags, plan = client.predict([handle_file(str(p)) for p in images], api_name="/upload_images")
    assert len(gallery) == 4 and len(list((new_root / "images").glob("*.png"))) == 4
    assert "in 4 image(s)" in plan

    assert "4 image(s) have no caption" in plan  # uploads come without captions; the lint report says so
    for image in sorted((new_root / "images").glob("*.png")):
        client.predict(image.name, f"sks, shape {image.stem}", api_name="/set_caption")
        assert image.with_suffix(".txt").read_text() == f"sks, shape {image.stem}\n"
    _, tags, plan = client.predict("", "", "", "", api_name="/bulk_caption")
    assert ["sks", 4] in tags["data"] and "have no caption" not in plan and "**Plan: 20 steps**" in plan  # the new project's own config (demo-tiny)

    run_dir = Path(client.predict(api_name="/start_training"))
    assert run_dir.parent == (new_root / "runs").resolve()

    def progressed():
        progress, losses, log, previews, state = client.predict(api_name="/poll")
        assert state not in ("failed", "crashed"), log
        return (progress, losses, previews, state) if state == "finished" else None

    progress, losses, previews, state = wait_for(progressed)
    assert 'data-step="8" data-total="8"' in progress
    assert [row[0] for row in losses["data"]] == list(range(1, 9))
    assert {row[2] for row in losses["data"]} == {"train"}
    assert previews and all(Path(p["image"]).name.endswith(".png") for p in previews)
    assert (run_dir / "samples" / "step000004-00.png").is_file() and (run_dir / "samples" / "step000008-00.png").is_file()

    adapters = client.predict(api_name="/list_adapters")
    final = str(run_dir / "demo.safetensors")
    assert final in [choice[0] for choice in adapters["choices"]]
    downloaded, report = client.predict(final, "kohya", "fp16", api_name="/export_adapter")
    exported = run_dir / "export" / "demo-kohya-fp16.safetensors"
    assert Path(downloaded).read_bytes() == exported.read_bytes()
    assert "FAIL" not in report and "diffusers" in report

    from safetensors import safe_open

    with safe_open(exported, "pt") as handle:
        keys = list(handle.keys())
        assert all(handle.get_tensor(k).dtype.is_floating_point for k in keys)
        assert {str(handle.get_tensor(k).dtype) for k in keys if not k.endswith(".alpha")} == {"torch.float16"}
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)


def test_a_failing_child_shows_its_error_and_the_app_keeps_running(running_app):
    from gradio_client import Client

    app, workspace = running_app
    client = Client(app.local_url, verbose=False)
    client.predict(api_name="/start_training")  # the start project has no images yet

    def ended():
        result = client.predict(api_name="/poll")
        return result if result[4] in ("failed", "crashed") else None

    _, _, log, _, state = wait_for(ended, timeout=120)
    assert state == "failed" and "No images in" in log and "put your training images there" in log.lower()
    assert client.predict(api_name="/list_adapters") is not None  # the page still answers


def test_a_killed_child_is_reported_as_crashed(running_app):
    import os
    import signal

    from gradio_client import Client

    from sdlora.demo.shapes import DEMO_DATASETS, write_dataset

    app, workspace = running_app
    write_dataset(workspace / "start" / "images", DEMO_DATASETS["demo-shapes"][:2])
    client = Client(app.local_url, verbose=False)
    run_dir = Path(client.predict(api_name="/start_training"))
    wait_for(lambda: client.predict(api_name="/poll")[4] == "running", timeout=180)
    os.kill(int((run_dir / "pid").read_text()), signal.SIGKILL)
    _, _, log, _, state = wait_for(lambda: (r := client.predict(api_name="/poll"))[4] == "crashed" and r, timeout=60)
    assert "ended without a final event" in log


def test_start_without_a_base_model_says_what_to_choose(tmp_path, monkeypatch):
    import gradio as gr

    from ui import app as page

    monkeypatch.setattr(page, "WORKSPACE", tmp_path)  # as `sdlora ui` sets it (an earlier app may have left its own)
    root = str(tmp_path / "fresh")
    values = page.open_project(root)[-len(page.form_options()):]  # the form as the page shows it
    with pytest.raises(gr.Error, match="Choose a base model first"):
        page.start_training(root, *values)
    assert not (tmp_path / "fresh" / "runs").exists()

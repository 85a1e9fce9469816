"""The page's API driven by gradio_client against the app launched in-process."""
from __future__ import annotations

from pathlib import Path

import pytest

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

    sources = write_dataset(tmp_path / "src", DEMO_DATASETS["demo-shapes"][:4])
    images = sorted(sources.glob("*.png"))
    gallery, tags, plan = client.predict([handle_file(str(p)) for p in images], api_name="/upload_images")
    assert len(gallery) == 4 and len(list((new_root / "images").glob("*.png"))) == 4
    assert "4 image(s)" in plan

    assert "Missing captions" in plan  # uploads come without captions; the plan says so
    for image in sorted((new_root / "images").glob("*.png")):
        client.predict(image.name, f"sks, shape {image.stem}", api_name="/set_caption")
        assert image.with_suffix(".txt").read_text() == f"sks, shape {image.stem}\n"
    _, tags, plan = client.predict("", "", "", "", api_name="/bulk_caption")
    assert ["sks", 4] in tags["data"] and "Missing captions" not in plan

    run_dir = Path(client.predict(api_name="/start_training"))
    assert run_dir.parent == (new_root / "runs").resolve()

    def progressed():
        progress, losses, log, previews, state = client.predict(api_name="/poll")
        assert state not in ("failed", "crashed"), log
        return (progress, losses, previews, state) if state == "finished" else None

    progress, losses, previews, state = wait_for(progressed)
    assert 'data-step="8" data-total="8"' in progress
    assert [row[0] for row in losses["data"]] == list(range(1, 9))
    assert previews and all(Path(p["image"]).name.endswith(".png") for p in previews)
    assert (run_dir / "samples" / "step000004-00.png").is_file() and (run_dir / "samples" / "step000008-00.png").is_file()

    adapters = client.predict(api_name="/list_adapters")
    final = str(run_dir / "demo.safetensors")
    assert final in [choice[0] for choice in adapters["choices"]]
    downloaded = client.predict(final, api_name="/export_adapter")
    assert Path(downloaded).read_bytes() == Path(final).read_bytes()


def test_a_crashing_child_shows_its_error_and_the_app_keeps_running(running_app):
    from gradio_client import Client

    from ui.project import open_project

    app, workspace = running_app
    client = Client(app.local_url, verbose=False)
    project = open_project(workspace / "start")
    cfg = project.load_config()
    cfg.model.path = str(workspace / "no-such-model")
    project.save_config(cfg)
    client.predict(str(project.root), api_name="/open_project")
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/start_training"]
    names = [p["label"] for p in api["parameters"]]
    values = [p["parameter_default"] for p in api["parameters"]]
    values[names.index("model.path")] = cfg.model.path
    client.predict(*values, api_name="/start_training")

    def ended():
        result = client.predict(api_name="/poll")
        return result if result[4] in ("failed", "crashed") else None

    _, _, log, _, state = wait_for(ended, timeout=120)
    assert state == "failed" and "Model path not found" in log
    assert client.predict(api_name="/list_adapters") is not None  # the page still answers

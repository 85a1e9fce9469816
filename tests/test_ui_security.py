"""The page binds to loopback, honours --auth, keeps uploads inside the project, paints without torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.ui_helpers import make_start_project


def test_upload_names_cannot_escape_the_project(tmp_path):
    from PIL import Image

    from ui.project import open_project, safe_file_name

    project = open_project(tmp_path / "proj")
    source = tmp_path / "x.png"
    Image.new("RGB", (8, 8), "red").save(source)
    landed = project.add_image(source, "../../evil.png")
    assert landed.parent == project.images and landed.name == "evil.png"
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()
    assert safe_file_name("..\\..\\win.PNG") == "win.png"
    assert safe_file_name("/etc/passwd") == "passwd"
    assert safe_file_name("...") == "image"


def test_uploads_never_overwrite_and_duplicates_are_skipped(tmp_path):
    from PIL import Image

    from ui.project import open_project

    project = open_project(tmp_path / "proj")
    red, blue = tmp_path / "a" / "cat.png", tmp_path / "b" / "cat.png"
    for path, colour in ((red, "red"), (blue, "blue")):
        path.parent.mkdir()
        Image.new("RGB", (8, 8), colour).save(path)
    first = project.add_image(red)
    second = project.add_image(blue)
    assert (first.name, second.name) == ("cat.png", "cat-1.png")
    assert project.add_image(red) is None  # same bytes: nothing new written
    assert len(project.image_files()) == 2
    with pytest.raises(Exception, match="not an image"):
        project.add_image(red, "notes.exe")


def test_captions_cannot_be_written_outside_the_images_folder(tmp_path):
    from ui.project import ProjectError, open_project

    project = open_project(tmp_path / "proj")
    with pytest.raises(ProjectError):
        project.write_caption("../../project.toml", "x")


def test_default_bind_is_loopback_and_auth_refuses_strangers(tmp_path, tiny_sd15):
    import httpx
    from gradio_client import Client

    from ui.launch import is_loopback, launch

    start = make_start_project(tmp_path / "ws")
    app = launch(start, port=None, block=False)
    try:
        assert app.server_name == "127.0.0.1" and app.local_url.startswith("http://127.0.0.1:")
        assert not app.share
    finally:
        app.close()
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")

    app = launch(start, port=None, auth=("ann", "secret"), block=False)
    try:
        response = httpx.get(app.local_url + "config")
        assert response.status_code == 401
        with pytest.raises(Exception):
            Client(app.local_url, verbose=False)
        assert Client(app.local_url, auth=("ann", "secret"), verbose=False).predict(api_name="/list_adapters")
    finally:
        app.close()


def test_open_bind_without_auth_warns(tmp_path, capsys, tiny_sd15):
    from ui.launch import launch, parse_auth

    assert parse_auth("u:p:q") == ("u", "p:q")
    with pytest.raises(Exception, match="USER:PASSWORD"):
        parse_auth("nopassword")
    app = launch(make_start_project(tmp_path / "ws"), host="0.0.0.0", port=None, block=False)
    app.close()
    assert "without --auth" in capsys.readouterr().err


def test_first_paint_needs_no_torch(tmp_path):
    start = make_start_project(tmp_path / "ws")
    code = (
        "import sys, urllib.request\n"
        "from ui.launch import launch\n"
        f"app = launch({str(start)!r}, port=None, block=False)\n"
        "page = urllib.request.urlopen(app.local_url).read().decode()\n"
        "print('RESULT', 'gradio' in page.lower(), 'torch' in sys.modules)\n"
        "app.close()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert lines == ["RESULT True False"], result.stdout + result.stderr

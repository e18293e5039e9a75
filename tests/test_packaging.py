"""The installed package: public faces, shipped files, console script."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import convstream.model
import convstream.server


@pytest.mark.parametrize(
    "module", ["convstream.server", "convstream.model", "convstream.client", "convstream.dashboard"]
)
def test_public_names_resolve(module: str) -> None:
    package = importlib.import_module(module)
    assert len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None, name


def test_model_and_card_ship_inside_the_package() -> None:
    folder = convstream.model.MODEL_PATH.parent
    assert (folder / "damage.onnx").is_file()
    assert (folder / "MODEL_CARD.md").is_file()
    assert convstream.server.Settings().model_path is None  # the shipped model by default


def test_dashboard_assets_ship_inside_the_package() -> None:
    import convstream.dashboard

    static = Path(convstream.dashboard.__file__).parent / "static"
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in static.iterdir()}


def test_console_script_is_installed() -> None:
    # pip puts console scripts beside the environment's interpreter
    exe = Path(sys.executable).parent / "convstream"
    assert exe.is_file(), f"pip install should have written {exe}"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=True)
    commands = ("serve", "token", "analyze", "stream", "info", "samples", "cameras", "watch")
    for command in (*commands, "dashboard"):
        assert command in out.stdout


@pytest.mark.parametrize(
    ("program", "told"),
    [
        ("import convstream.server", None),
        ("import convstream.model; convstream.model.DamageModel()", None),
        ("import convstream.model", "0"),  # whoever wants onnxruntime's store says so
    ],
)
def test_nothing_is_written_into_the_users_home(
    tmp_path: Path, program: str, told: str | None
) -> None:
    """onnxruntime 1.32 makes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ (a device id
    and a telemetry store) when imported; the server and the model keep it off."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    if told is not None:
        env["ORT_DISABLE_TELEMETRY"] = told
    subprocess.run([sys.executable, "-c", program], env=env, timeout=120, check=True)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    if told == "0":  # the check can tell: this onnxruntime does write it, when let
        assert ".cache/Microsoft/DeveloperTools/.onnxruntime/deviceid" in written, written
    else:
        assert written == []


REPO = Path(__file__).resolve().parents[1]


def test_container_image_listens_where_its_ports_and_health_check_say() -> None:
    # the Dockerfile's settings are names the server takes (it refuses an unknown
    # CONVSTREAM_ variable at start), and its EXPOSE and HEALTHCHECK follow the defaults
    from convstream.server.config import load_settings

    text = (REPO / "Dockerfile").read_text()
    env = dict(re.findall(r"\b(CONVSTREAM_[A-Z_]+)=(\S+)", text))
    assert env, "the image sets where the server listens"
    settings = load_settings(environ=env)
    assert (settings.host, settings.metrics_host) == ("0.0.0.0", "0.0.0.0")
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == {settings.port, settings.metrics_port}
    probe = re.search(r"^HEALTHCHECK .*http://127\.0\.0\.1:(\d+)(/\w+)", text, re.M | re.S)
    assert probe is not None
    assert (int(probe[1]), probe[2]) == (settings.metrics_port, "/readyz")


def test_container_build_context_has_every_file_the_package_installs() -> None:
    # .dockerignore keeps the context small; a pattern that caught a file the wheel is built
    # from would build an image without it. Docker matches a pattern against each path and
    # its folders; fnmatch's * also crosses folders, so this errs towards "ignored".
    patterns = [
        line.strip().removeprefix("**/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        heads = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(head, p) or fnmatch.fnmatch(head.rsplit("/", 1)[-1], p)
            for head in heads
            for p in patterns
        )

    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    # the installed copy's list: from the repository's root an egg-info there comes first
    site = Path(convstream.server.__file__).parents[2]
    dist = next(importlib.metadata.distributions(name="convstream", path=[str(site)]))
    installed = [str(f) for f in dist.files or [] if f.parts[0] == "convstream"]
    sources = ["pyproject.toml", "README.md"]
    for path in installed:
        package, name = path.rsplit("/", 1)
        if name.endswith(".pyc"):
            continue
        sources.append(f"{folders[package.replace('/', '.')]}/{name}")
    assert any(s.endswith("damage.onnx") for s in sources)
    assert [s for s in sources if not (REPO / s).is_file()] == []
    assert [s for s in sources if ignored(s)] == []
    assert ignored("models/convstream/model/damage.pt") and ignored(".venv/bin/python")

"""The installed package: public faces, shipped files, console script."""

from __future__ import annotations

import importlib
import subprocess
import sys
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

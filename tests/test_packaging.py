"""The installed package: public faces, shipped files, console script."""

from __future__ import annotations

import importlib
import shutil
import subprocess

import pytest

import convstream.model
import convstream.server


@pytest.mark.parametrize("module", ["convstream.server", "convstream.model", "convstream.client"])
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


def test_console_script_is_installed() -> None:
    exe = shutil.which("convstream")
    assert exe is not None, "pip install should put `convstream` on PATH"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=True)
    for command in ("serve", "analyze", "stream", "info", "samples"):
        assert command in out.stdout

"""One tiny jina-layout checkpoint and one encoder per test session (imports + load take seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from engine.testing import write_tiny_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny model gains nothing from threads, and OpenMP workers spinning on a busy machine
    made these tests 10x slower. Only the engine tests run this way; the setting is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "jina-v4-tiny")


@pytest.fixture(scope="session")
def encoder(tiny_dir):
    from engine.loader import load_encoder

    return load_encoder(str(tiny_dir))


@pytest.fixture()
def enc(encoder):
    """The shared encoder, put back on the retrieval task whatever a test did."""
    encoder.set_task("retrieval")
    yield encoder
    encoder.set_task("retrieval")


@pytest.fixture()
def tiny_copy(tiny_dir, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "ckpt"))


def page(width: int, height: int, seed: int = 0) -> Image.Image:
    img = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    for i in range(6):
        y = (i * 37 + seed * 11) % max(height - 10, 1)
        draw.rectangle([10 + seed * 3, y, width - 20, y + 6], fill=((seed * 40) % 255, 20 * i, 90))
    draw.text((12, 12), f"page {seed}", fill=(0, 0, 0))
    return img

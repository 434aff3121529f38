"""Shared fixtures: the real data files beside the repo, and a tiny model built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("REASONER_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "gsm8k" / "test.jsonl").is_file():
        pytest.fail(
            f"benchmark data not found at {path}: the repo expects ../shared/data beside it (or set REASONER_SHARED_DATA)"
        )
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from reasoner.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("REASONER_SKIP_DOCKER") == "1":
        skip = pytest.mark.skip(reason="REASONER_SKIP_DOCKER=1")
        for item in items:
            if "docker" in item.keywords:
                item.add_marker(skip)

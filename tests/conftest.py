"""netcheck's own tests. Tests marked ``root`` build namespaces; the rest run anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo() -> Path:
    return REPO


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from netcheck.lab import has_net_admin

    if has_net_admin():
        return
    skip = pytest.mark.skip(reason="needs root to build network namespaces (run as root, or in the Vagrant box)")
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(skip)

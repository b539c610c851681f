"""Shared fixtures of the analysis tests: the recorded quick dataset and synthetic tables."""

from __future__ import annotations

import os

import pytest

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
FIXTURE_CSV = os.path.join(DATA, "quick_cpu.csv")
FIXTURE_PROFILE = os.path.join(DATA, "quick_cpu_profile.json")


@pytest.fixture(scope="session")
def fixture_csv() -> str:
    return FIXTURE_CSV


@pytest.fixture(scope="session")
def fixture_profile() -> str:
    return FIXTURE_PROFILE

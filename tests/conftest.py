"""Shared test configuration: anyio runs async tests on asyncio (grpc.aio needs it)."""

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"

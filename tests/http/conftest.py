from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.http.app import create_app
from gateway.settings import Settings


@pytest.fixture
async def client(settings: Settings, clean: None) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        yield test_client

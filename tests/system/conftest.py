"""Fixtures the system tests share."""

from __future__ import annotations

import pytest

from s3kit import SECRET, SECRET_ENV, S3Server


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()

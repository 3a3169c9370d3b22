"""Fixtures for the contract suite; the remotes themselves are made in remote_factories.py."""

import pytest
from remote_factories import REFUSING_FACTORIES, REMOTE_FACTORIES, UNREACHABLE_FACTORIES


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(params=REMOTE_FACTORIES)
def remote(request, tmp_path):
    return request.param(request, tmp_path)


@pytest.fixture(params=REFUSING_FACTORIES)
def refusing_remote(request, tmp_path):
    return request.param(request, tmp_path)


@pytest.fixture(params=UNREACHABLE_FACTORIES)
def unreachable_remote(request, tmp_path):
    return request.param(request, tmp_path)

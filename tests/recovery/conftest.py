from tests.worker.conftest import consumer

__all__ = ["consumer"]

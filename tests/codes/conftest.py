from tests.http.conftest import raw_redis, services  # noqa: F401  (the HTTP tests' fixtures)

from tests.http.conftest import raw_redis, services  # noqa: F401  (the HTTP tests' fixtures)
from tests.live_gateway import gateway, http, procs  # noqa: F401  (a real gateway, for races)

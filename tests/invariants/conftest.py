from tests.live_gateway import gateway, http, procs  # noqa: F401  (a real gateway, for races)

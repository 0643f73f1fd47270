"""The private redis-server of integration tests; it lives in loadgen/redis_server.py, which
`fleetgate bench chaos` shares."""

from fleetgate.loadgen.redis_server import RedisServer

__all__ = ["RedisServer"]

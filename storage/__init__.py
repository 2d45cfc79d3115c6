"""deepsc-node storage package."""
import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__: list[str] = []

"""deepsc-node config package."""
import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__: list[str] = []

"""The volunteer worker and its command line, `swarmclient`."""

from swarm.client.settings import ClientSettings

__all__ = ["ClientSettings"]

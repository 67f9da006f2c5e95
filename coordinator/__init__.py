"""The coordinator service: gRPC for workers, HTTP API, storage, blobs and aggregation."""

from swarm.coordinator.settings import CoordinatorSettings

__all__ = ["CoordinatorSettings"]

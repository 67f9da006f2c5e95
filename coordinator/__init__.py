"""The coordinator service: gRPC for workers, HTTP API, storage, blobs and aggregation.

Nothing is imported here, so that `swarm jobs …` and `swarm credits …` (HTTP clients) start
without loading PyTorch and transformers.
"""

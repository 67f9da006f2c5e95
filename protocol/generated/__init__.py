"""Generated protobuf and gRPC code for swarm.v1; produced by `python -m swarm.protocol.codegen`."""

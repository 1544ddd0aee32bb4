"""gRPC transport: protobuf <-> service calls, status codes, health and reflection."""

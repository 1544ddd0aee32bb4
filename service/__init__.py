"""orders-service: order management over REST and gRPC, PostgreSQL storage, Redis Streams events."""

__version__ = "0.1.0"

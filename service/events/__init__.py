"""Events: the outbox relay (PostgreSQL -> Redis Stream) and the stream consumer (confirm handler)."""

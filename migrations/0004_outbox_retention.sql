-- Published outbox rows are removed: at once (OUTBOX_RETENTION=0, the default) or, when kept for a
-- while, by the worker's purge in batches, oldest first, through this index.
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

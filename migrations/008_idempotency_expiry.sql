-- Expired idempotency records are pruned (worker/prune.py): found by their expiry, oldest first.
CREATE INDEX IF NOT EXISTS idempotency_records_expires_at ON idempotency_records (expires_at);

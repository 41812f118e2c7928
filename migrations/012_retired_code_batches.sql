-- Retention (issue 22): a code batch's codes (redeemed ones' tombstones too) and its records leave the code buckets
-- once CLAIMGATE_RETENTION has passed since its window ended (the code retention sweep, retire_codes); the ledger
-- records when, so restore and reconcile expect Redis without them.
ALTER TABLE code_batches ADD COLUMN retired_at bigint NULL;
-- The batches the sweep has still to retire, by the end of their window.
CREATE INDEX code_batches_unretired ON code_batches (ends_at) WHERE retired_at IS NULL;

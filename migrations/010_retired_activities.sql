-- Retired activities (design.md, "Retention"): an ended activity's partition leaves Redis once its retention has
-- passed (the worker's retire sweep), and the ledger records it. `retired_at` is when (unix seconds, the one
-- clock), NULL while its partition is in Redis; a late grant or operator's change brings the partition back and
-- clears it. The marker `{a:X}:retired` in Redis is the authority; this column follows it (the sweep writes it
-- after the script, a revival clears it before and after, and both heal a crash in between).
ALTER TABLE activities ADD COLUMN retired_at bigint;
-- The sweep's candidates: activities not retired, by their end.
CREATE INDEX activities_to_retire ON activities (ends_at) WHERE retired_at IS NULL;
-- The stream of a retired partition is recorded as retired too (not polled until it gets an entry). Migration 009
-- adds this column with the worker's polling; written here as well, and harmlessly again after it, so this
-- migration stands on its own.
ALTER TABLE streams ADD COLUMN IF NOT EXISTS retired_at bigint;

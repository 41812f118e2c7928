-- Retired streams (design.md, "Retention"): a partition removed from Redis keeps its registry row, stamped with
-- when it was retired; the worker stops reading its stream and gateways stop measuring it. A late change to the
-- partition revives it (retired_at back to NULL) and it is polled again from the next refresh of the list.
ALTER TABLE streams ADD COLUMN retired_at bigint;

-- The streams polled, with each activity's window and status as the ledger knows them: the latest status
-- change and window patch of a partition, found by (partition, action, seq) rather than a scan of the audit.
CREATE INDEX audit_partition_action ON audit (partition, action, seq);

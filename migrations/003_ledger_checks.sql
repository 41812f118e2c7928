-- The ledger's own checks and restore.
-- claims.ordinal: the pack's place in the activity's sales (the activity's `taken` after the claim). Unique per
-- activity: a Redis that lost its history and sold a unit again would issue an ordinal twice.
ALTER TABLE claims ADD COLUMN ordinal bigint;
CREATE UNIQUE INDEX claims_ordinal ON claims (activity_id, ordinal) WHERE ordinal IS NOT NULL;

-- coupons.partition: the wallet bucket holding the coupon, so restore and reconcile read one bucket by index.
-- (Rows written before this migration keep ''; they were written by a release that had no restore.)
ALTER TABLE coupons ADD COLUMN partition text NOT NULL DEFAULT '';
CREATE INDEX coupons_partition ON coupons (partition);
-- Claims whose coupons the ledger lacks (a deliver a crash left undone) are found by claim.
CREATE INDEX coupons_claim ON coupons (claim_id);

-- conflicts.activity: which activity a rejected entry concerns, for its stats.
ALTER TABLE conflicts ADD COLUMN activity text;
CREATE INDEX conflicts_activity ON conflicts (activity);

-- Retention (issue 22): final coupons and finished orders leave Redis after CLAIMGATE_RETENTION (retain_wallet);
-- the ledger records when, so reads of them answer from here and recovery expects Redis not to hold them.
ALTER TABLE coupons ADD COLUMN archived_at bigint;
ALTER TABLE orders ADD COLUMN archived_at bigint;
-- A wallet's archived coupons of one status, newest first (the wallet's status filter reads them here).
CREATE INDEX coupons_archived ON coupons (user_id, status, coupon_id DESC) WHERE archived_at IS NOT NULL;

-- No coupon without its claim (design.md): a wallet's event about a claim's coupons (its `delivered`, or a
-- checkout change) whose claim the ledger does not hold yet waits here, acknowledged, instead of reaching
-- `coupons`. The claim's `claimed` (or `code_redeemed`) travels on another stream, persisted by another lane or
-- worker; the transaction that commits it, or any later batch, applies what waits for it. An entry whose claim
-- never comes (Redis lost it before the worker read it) stays here and reconcile reports it.
CREATE TABLE held_entries (
    stream text NOT NULL,
    entry_id text NOT NULL,
    claim_id text NOT NULL,
    partition text NOT NULL,
    fields jsonb NOT NULL,
    held_at bigint NOT NULL,
    PRIMARY KEY (stream, entry_id)
);
CREATE INDEX held_entries_claim ON held_entries (claim_id);
CREATE INDEX held_entries_partition ON held_entries (partition);

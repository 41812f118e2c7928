-- Code batches, recorded before their packs leave the stock (design.md): a batch a crash left 'recorded' is
-- voided by reconcile (its packs go back; nobody ever saw its codes). Codes are kept only as keyed hashes.
CREATE TABLE code_batches (
    batch_id     text PRIMARY KEY,
    activity_id  text NOT NULL,
    count        integer NOT NULL CHECK (count > 0),
    starts_at    bigint NOT NULL,
    ends_at      bigint NOT NULL,
    pack         text NOT NULL,  -- the pack as the redeem script reads it
    state        text NOT NULL CHECK (state IN ('recorded', 'ready', 'void')),
    reserved     boolean NOT NULL DEFAULT false,  -- its packs left the stock (the codes_reserved event)
    created_by   text NOT NULL,
    created_at   bigint NOT NULL
);
CREATE INDEX code_batches_activity ON code_batches (activity_id);

CREATE TABLE codes (
    code_hash    text PRIMARY KEY,
    batch_id     text NOT NULL REFERENCES code_batches,
    partition    text NOT NULL,  -- the code bucket holding it
    redeemed_by  text,
    claim_id     text,
    redeemed_at  bigint
);
CREATE INDEX codes_batch ON codes (batch_id);
CREATE INDEX codes_partition ON codes (partition);

-- The ledger. Definitions (templates, activities) are written here first and mirrored into Redis; everything
-- else arrives from the event streams through the worker, each event applied at most once.

CREATE TABLE templates (
    template_id  text PRIMARY KEY,
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('cash', 'threshold', 'discount')),
    amount_off   bigint CHECK (amount_off >= 0),
    percent_off  integer CHECK (percent_off BETWEEN 1 AND 100),
    max_off      bigint CHECK (max_off >= 0),
    min_spend    bigint CHECK (min_spend >= 0),
    scope        text[] NOT NULL DEFAULT '{}',
    valid_from   bigint,
    valid_until  bigint,
    valid_days   integer CHECK (valid_days > 0),
    created_by   text NOT NULL,
    created_at   bigint NOT NULL,
    CHECK ((valid_days IS NULL) <> (valid_from IS NULL AND valid_until IS NULL))
);

CREATE TABLE activities (
    activity_id      text PRIMARY KEY,
    name             text NOT NULL,
    pack             jsonb NOT NULL,
    starts_at        bigint NOT NULL,
    ends_at          bigint NOT NULL CHECK (ends_at > starts_at),
    stock            bigint NOT NULL CHECK (stock >= 0),
    per_user_limit   integer NOT NULL CHECK (per_user_limit > 0),
    per_device_limit integer CHECK (per_device_limit > 0),
    eligibility      jsonb,
    budget           bigint CHECK (budget >= 0),
    face_per_pack    bigint NOT NULL,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'ended')),
    created_by       text NOT NULL,
    created_at       bigint NOT NULL
);
CREATE INDEX activities_newest ON activities (activity_id DESC);

-- The registry of event streams; wallet and code buckets are a fixed set, an activity's is added with it.
CREATE TABLE streams (
    stream     text PRIMARY KEY,
    partition  text NOT NULL UNIQUE,
    kind       text NOT NULL CHECK (kind IN ('activity', 'wallet', 'code'))
);

CREATE TABLE claims (
    claim_id    text PRIMARY KEY,
    activity_id text NOT NULL,
    user_id     text NOT NULL,
    device_id   text NOT NULL,
    channel     text NOT NULL,
    mode        text NOT NULL CHECK (mode IN ('claim', 'grant', 'code')),
    operator    text,
    answer      text NOT NULL,
    claimed_at  bigint NOT NULL,
    event_id    text NOT NULL UNIQUE,
    partition   text NOT NULL,
    seq         bigint NOT NULL
);
CREATE INDEX claims_activity ON claims (activity_id);
CREATE INDEX claims_user ON claims (activity_id, user_id);

CREATE TABLE coupons (
    coupon_id    text PRIMARY KEY,
    user_id      text NOT NULL,
    activity_id  text NOT NULL,
    template_id  text NOT NULL,
    claim_id     text NOT NULL,
    status       text NOT NULL,
    version      integer NOT NULL,
    valid_from   bigint NOT NULL,
    valid_until  bigint NOT NULL,
    order_id     text,
    updated_at   bigint NOT NULL
);
CREATE INDEX coupons_user ON coupons (user_id, coupon_id DESC);
CREATE INDEX coupons_activity ON coupons (activity_id);

CREATE TABLE coupon_events (
    coupon_id  text NOT NULL,
    version    integer NOT NULL,
    event_id   text NOT NULL,
    type       text NOT NULL,
    at         bigint NOT NULL,
    status     text NOT NULL,
    PRIMARY KEY (coupon_id, version)
);

-- Idempotency records as the claim events carried them: what restore needs to answer a keyed retry again.
CREATE TABLE idempotency_records (
    redis_key   text PRIMARY KEY,
    partition   text NOT NULL,
    body_hash   text NOT NULL,
    answer      text NOT NULL,
    expires_at  bigint NOT NULL
);

-- Highest seq persisted per partition (not a line below which everything is persisted).
CREATE TABLE partition_marks (
    partition  text PRIMARY KEY,
    seq        bigint NOT NULL
);

-- What the ledger's own checks reject: kept, never dropped, counted in stats.
CREATE TABLE conflicts (
    conflict_id bigserial PRIMARY KEY,
    event_id    text,
    partition   text NOT NULL,
    entry_id    text NOT NULL,
    reason      text NOT NULL,
    entry       text NOT NULL,  -- the stream entry as JSON text (jsonb cannot hold every string an entry can)
    noted_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (partition, entry_id)
);

-- Operators' changes, written from their events.
CREATE TABLE audit (
    event_id   text PRIMARY KEY,
    partition  text NOT NULL,
    seq        bigint NOT NULL,
    at         bigint NOT NULL,
    operator   text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL,
    before     jsonb,
    after      jsonb
);

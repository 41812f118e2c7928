-- Checkout: a coupon's lock and discount, each order's coupon, and which order each coupon event concerns.
ALTER TABLE coupons ADD COLUMN locked_until bigint;
ALTER TABLE coupons ADD COLUMN discount bigint;
ALTER TABLE coupon_events ADD COLUMN order_id text;

-- An order's coupon as its newest event left it (version: the order's own, one step per transition).
CREATE TABLE orders (
    user_id       text NOT NULL,
    order_id      text NOT NULL,
    coupon_id     text NOT NULL,
    status        text NOT NULL CHECK (status IN ('locked', 'redeemed', 'released', 'refunded', 'expired')),
    discount      bigint NOT NULL,
    split         text NOT NULL,  -- JSON [{sku, amount}] as the lock answered it
    locked_until  bigint,
    returned      boolean,
    version       integer NOT NULL,
    partition     text NOT NULL,
    updated_at    bigint NOT NULL,
    PRIMARY KEY (user_id, order_id)
);
CREATE INDEX orders_partition ON orders (partition);
CREATE INDEX orders_coupon ON orders (coupon_id);

-- The blocklist partition has a stream of its own; the blocklist table is written from its events, each row
-- changed only by a newer event (seq), so two workers cannot apply an add and a remove out of order.
ALTER TABLE streams DROP CONSTRAINT streams_kind_check;
ALTER TABLE streams ADD CONSTRAINT streams_kind_check CHECK (kind IN ('activity', 'wallet', 'code', 'blocklist'));

CREATE TABLE blocklist (
    kind      text NOT NULL CHECK (kind IN ('user', 'device')),
    id        text NOT NULL,
    present   boolean NOT NULL,
    added_at  bigint NOT NULL,
    by        text NOT NULL,
    seq       bigint NOT NULL,
    PRIMARY KEY (kind, id)
);

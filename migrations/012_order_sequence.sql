-- +goose Up
-- Per-order ordering (shared/consumer, "Ordering" in the README).
--
-- Every event an order has is numbered as it is written to the outbox:
-- seq is 1 for its first event, 2 for the next, and prior lists the routing
-- keys of the events before it, oldest first. The relay sends both as
-- headers. A consumer that keeps its effects in order applies an event only
-- once it has applied the last earlier event of the order that its queue
-- receives (the last of prior that it is bound to), so it needs no word of
-- the events other queues get. A trigger numbers the rows, so that every
-- writer of the outbox (orders, payment, tracking) numbers them alike; the
-- row of order_event_seq it updates is locked to the end of the writing
-- transaction, so two writers of one order's events are numbered in the
-- order they commit.
CREATE TABLE order_event_seq (
    order_id   uuid PRIMARY KEY,
    types      text[]      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The orders service sweeps the numbering of orders whose first event is a
-- week old (orderSeqRetention). An update leaves created_at alone, so it
-- stays HOT (on PostgreSQL 15 a changed column under any index, BRIN too,
-- makes it not).
CREATE INDEX order_event_seq_age_idx ON order_event_seq USING brin (created_at);

ALTER TABLE outbox ADD COLUMN seq int, ADD COLUMN prior text[];

-- +goose StatementBegin
CREATE FUNCTION outbox_sequence() RETURNS trigger AS $$
DECLARE
    t text[];
BEGIN
    -- The off switch the benchmark compares against: ALTER DATABASE …
    -- SET dabba.ordering = 'off'. Rows then carry no number, and consumers
    -- take them as they come.
    IF current_setting('dabba.ordering', true) = 'off' THEN
        RETURN NEW;
    END IF;
    INSERT INTO order_event_seq AS s (order_id, types) VALUES (NEW.order_id, ARRAY[NEW.routing_key])
    ON CONFLICT (order_id) DO UPDATE SET types = s.types || NEW.routing_key
    RETURNING types INTO t;
    NEW.seq := cardinality(t);
    NEW.prior := t[1:cardinality(t) - 1];
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
-- +goose StatementEnd
CREATE TRIGGER outbox_sequence BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_sequence();

-- Where each ordered consumer is in each order: the seq of the last event
-- of the order it applied (or an operator skipped).
CREATE TABLE order_cursors (
    consumer   text        NOT NULL,
    order_id   uuid        NOT NULL,
    seq        int         NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, order_id)
);
-- Swept by each consumer once as old as its inbox retention: an order's
-- events all come within hours. Kept HOT the same way.
CREATE INDEX order_cursors_age_idx ON order_cursors USING brin (created_at);

-- Events that came before their predecessor: kept here, and acked, until
-- the predecessor is applied (they are then published to the queue again)
-- or they have waited too long (then dead-lettered).
CREATE TABLE held_events (
    consumer    text        NOT NULL,
    event_id    text        NOT NULL,
    order_id    uuid        NOT NULL,
    seq         int         NOT NULL,
    after       int         NOT NULL, -- the seq it waits for
    routing_key text        NOT NULL,
    prior       text        NOT NULL, -- as in the x-dabba-prior header
    body        bytea       NOT NULL,
    traceparent text,
    held_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX held_events_order_idx ON held_events (consumer, order_id);

-- +goose Down
DROP TABLE held_events;
DROP TABLE order_cursors;
DROP TRIGGER outbox_sequence ON outbox;
DROP FUNCTION outbox_sequence();
ALTER TABLE outbox DROP COLUMN seq, DROP COLUMN prior;
DROP TABLE order_event_seq;

-- +goose Up
CREATE TABLE orders (
    id               uuid PRIMARY KEY,
    customer_id      text        NOT NULL,
    restaurant_id    text        NOT NULL,
    email            text        NOT NULL,
    items            jsonb       NOT NULL,
    delivery_address jsonb       NOT NULL,
    total_cents      bigint      NOT NULL CHECK (total_cents >= 0),
    status           text        NOT NULL,
    rider_id         text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX orders_restaurant_idx ON orders (restaurant_id, created_at);

-- Every status an order went through, in order; the API's "history".
CREATE TABLE order_status_history (
    order_id uuid        NOT NULL REFERENCES orders (id),
    status   text        NOT NULL,
    at       timestamptz NOT NULL,
    PRIMARY KEY (order_id, status)
);

-- Idempotency-Key records (IETF draft): the first answer, replayed byte for
-- byte to a client that retries with the same key and body.
CREATE TABLE idempotency_keys (
    customer_id   text        NOT NULL,
    key           text        NOT NULL,
    request_hash  bytea       NOT NULL,
    status_code   int         NOT NULL,
    response_body bytea       NOT NULL,
    location      text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (customer_id, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);

-- Transactional outbox: written in the same transaction as the change it
-- announces, published by the relay, marked sent after the broker confirmed.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    routing_key text        NOT NULL,
    order_id    uuid        NOT NULL,
    payload     bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;

-- +goose StatementBegin
CREATE FUNCTION outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
-- +goose StatementEnd
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Inbox: the message ids each consumer has processed, written in the same
-- transaction as the effect so a redelivery has no second effect.
CREATE TABLE processed_messages (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- +goose Down
DROP TABLE processed_messages;
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
DROP TABLE outbox;
DROP TABLE idempotency_keys;
DROP TABLE order_status_history;
DROP TABLE orders;

-- +goose Up
-- payment: one charge per order, whatever happens.
CREATE TABLE payments (
    order_id     uuid PRIMARY KEY,
    status       text        NOT NULL,
    charge_id    text,
    amount_cents bigint      NOT NULL,
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- restaurant: the restaurant-side feed.
CREATE TABLE restaurant_notifications (
    message_id    text PRIMARY KEY,
    restaurant_id text        NOT NULL,
    order_id      uuid        NOT NULL,
    event_type    text        NOT NULL,
    total_cents   bigint,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX restaurant_notifications_feed_idx ON restaurant_notifications (restaurant_id, created_at);

-- email: one row per email handed to the SMTP server.
CREATE TABLE emails_sent (
    message_id text PRIMARY KEY,
    order_id   uuid        NOT NULL,
    recipient  text        NOT NULL,
    kind       text        NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now()
);

-- analytics: every order event, written in batches.
CREATE TABLE analytics_events (
    message_id  text PRIMARY KEY,
    event_type  text        NOT NULL,
    order_id    uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analytics_events_order_idx ON analytics_events (order_id);

-- +goose Down
DROP TABLE analytics_events;
DROP TABLE emails_sent;
DROP TABLE restaurant_notifications;
DROP TABLE payments;

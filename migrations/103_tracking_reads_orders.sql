-- +goose Up
-- Tracking no longer keeps its own copy of each order: it reads the order
-- from the orders table when a customer connects and follows its changes
-- in the outbox (services/tracking/feed.go).
DROP TABLE tracking_orders;

-- +goose Down
CREATE TABLE tracking_orders (
    order_id   uuid PRIMARY KEY,
    rider_id   text,
    status     text,
    status_at  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    rider_at   timestamptz,
    dest_lat   double precision,
    dest_lng   double precision,
    dest_line1 text
);

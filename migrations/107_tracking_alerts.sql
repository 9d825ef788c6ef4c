-- +goose Up
-- The alerts tracking raised about an order ("your rider is near",
-- "rider arriving" at the restaurant): one row per order and kind, inserted
-- in the transaction that writes the event to the outbox, so an alert is
-- published once per order however many tracking instances see the rider
-- come near, and across their restarts.
CREATE TABLE tracking_alerts (
    order_id   uuid             NOT NULL,
    kind       text             NOT NULL,
    rider_id   text             NOT NULL,
    distance_m double precision NOT NULL,
    at         timestamptz      NOT NULL,
    PRIMARY KEY (order_id, kind)
);

-- +goose Down
DROP TABLE tracking_alerts;

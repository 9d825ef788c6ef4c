-- +goose Up
-- What tracking knows of each order: its rider and latest status, from the
-- order events on the durable "tracking" queue.
CREATE TABLE tracking_orders (
    order_id   uuid PRIMARY KEY,
    rider_id   text,
    status     text,
    status_at  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Each rider's latest fix, written by the ingest at most every half second
-- (batched), so a customer connecting to any instance gets it at once.
CREATE TABLE rider_positions (
    rider_id   text PRIMARY KEY,
    lat        double precision NOT NULL,
    lng        double precision NOT NULL,
    heading    double precision NOT NULL,
    speed_kmh  double precision NOT NULL,
    seq        bigint           NOT NULL,
    ts         timestamptz      NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE rider_positions;
DROP TABLE tracking_orders;

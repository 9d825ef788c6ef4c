-- +goose Up
-- payment: the refund of a cancelled order's charge, one per order
-- (payments.status also says "failed" for a payment refused for good and
-- "cancelled" for an order cancelled before any charge).
CREATE TABLE refunds (
    order_id     uuid PRIMARY KEY,
    refund_id    text        NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE refunds;

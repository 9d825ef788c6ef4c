-- +goose Up
-- order.paid carries no restaurant or recipient in events.Paid: the
-- restaurant and email consumers fall back to what they recorded for the
-- order's order.placed, looked up by order id.
CREATE INDEX restaurant_notifications_order_idx ON restaurant_notifications (order_id);
CREATE INDEX emails_sent_order_idx ON emails_sent (order_id);

-- +goose Down
DROP INDEX emails_sent_order_idx;
DROP INDEX restaurant_notifications_order_idx;

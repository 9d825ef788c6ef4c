-- +goose NO TRANSACTION
-- +goose Up
-- Tracking looks up the deliveries a rider is on when the rider's first fix
-- arrives (services/tracking/deliveries.go). Only rider_id is indexed, not
-- status: a status change then still updates the row in place (HOT), and
-- only an assignment writes an index entry. Built concurrently: the orders
-- table takes writes meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_rider_idx ON orders (rider_id) WHERE rider_id IS NOT NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS orders_rider_idx;

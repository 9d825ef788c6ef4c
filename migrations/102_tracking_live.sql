-- +goose Up
-- Where the order goes (from order.placed), so the tracking page can draw
-- the rider heading there, and when the rider was assigned, so an older
-- assignment delivered late never replaces a newer one.
ALTER TABLE tracking_orders
    ADD COLUMN rider_at   timestamptz,
    ADD COLUMN dest_lat   double precision,
    ADD COLUMN dest_lng   double precision,
    ADD COLUMN dest_line1 text;

-- +goose Down
ALTER TABLE tracking_orders
    DROP COLUMN dest_line1,
    DROP COLUMN dest_lng,
    DROP COLUMN dest_lat,
    DROP COLUMN rider_at;

-- +goose Up
-- Each restaurant's record: where it is, so that tracking can tell the
-- restaurant its rider is arriving (order.rider_arriving). Kept by the
-- restaurant service (PUT /v1/restaurants/{id}).
CREATE TABLE restaurants (
    id         text PRIMARY KEY,
    name       text             NOT NULL,
    lat        double precision NOT NULL,
    lng        double precision NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE restaurants;

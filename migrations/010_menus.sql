-- +goose Up
-- Each restaurant's menu, which prices its orders' lines in the transaction
-- that places them (one look-up for a whole group of orders, by primary
-- key). PUT /v1/restaurants/{id}/menu replaces a restaurant's rows;
-- position keeps the order the restaurant listed them in.
CREATE TABLE menu_items (
    restaurant_id text        NOT NULL,
    sku           text        NOT NULL,
    name          text        NOT NULL,
    price_cents   bigint      NOT NULL CHECK (price_cents >= 0),
    available     boolean     NOT NULL,
    position      bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (restaurant_id, sku)
);

-- +goose Down
DROP TABLE menu_items;

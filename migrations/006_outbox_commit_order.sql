-- +goose Up
-- The outbox as a log read in commit order (shared/outbox.Read): each row
-- carries the id of the transaction that wrote it. Ids (bigserial) are
-- handed out before commit, so a row with a lower id can become visible
-- after one with a higher id, and a reader that remembered "up to id N"
-- would skip it. A reader instead reads only rows of transactions older
-- than the oldest one still running (pg_snapshot_xmin), ordered by (tx, id):
-- every such transaction has ended, so no row can appear before the
-- position it reached. Rows written before this column get 0: first.
ALTER TABLE outbox ADD COLUMN tx bigint NOT NULL DEFAULT 0;
ALTER TABLE outbox ALTER COLUMN tx SET DEFAULT (pg_current_xact_id()::text)::bigint;
CREATE INDEX outbox_commit_order_idx ON outbox (tx, id);

-- Where each durable reader of the outbox (shared/outbox.Projection) has
-- got to, written in the same transaction as the effects of what it read.
-- The outbox sweep keeps every row a reader has not passed.
CREATE TABLE outbox_readers (
    name       text PRIMARY KEY,
    tx         bigint      NOT NULL,
    id         bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE outbox_readers;
DROP INDEX outbox_commit_order_idx;
ALTER TABLE outbox DROP COLUMN tx;

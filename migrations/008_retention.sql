-- +goose Up
-- The inbox is swept of records older than its retention
-- (INBOX_RETENTION). processed_at grows with the table, so a BRIN index
-- (a few pages for millions of rows, next to nothing to maintain on
-- insert) finds the old ones without reading the rest.
CREATE INDEX processed_messages_age_idx ON processed_messages USING brin (processed_at);

-- The same for the outbox's rows older than OUTBOX_RETENTION (those every
-- reader has passed go).
CREATE INDEX outbox_age_idx ON outbox USING brin (created_at);

-- +goose Down
DROP INDEX outbox_age_idx;
DROP INDEX processed_messages_age_idx;

-- +goose Up
-- The relay reads the outbox as a log in commit order from a position of
-- its own (outbox_readers 'relay'), like every other reader, instead of
-- leasing rows and marking them sent: a row costs its insert and nothing
-- more (no two updates, one of them renewing every index entry, and no
-- dead rows for vacuum).
--
-- Its position starts just before the oldest row not yet sent, so nothing
-- unsent is lost; rows after it that were sent go once more, which the
-- consumers' inboxes make harmless. With nothing unsent it starts at the
-- oldest transaction still running: what they write comes after it.
INSERT INTO outbox_readers (name, tx, id)
SELECT 'relay', coalesce(u.tx, h.xmin), coalesce(u.id - 1, 0)
FROM (SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint AS xmin) h
LEFT JOIN LATERAL (SELECT tx, id FROM outbox WHERE sent_at IS NULL ORDER BY tx, id LIMIT 1) u ON true
ON CONFLICT (name) DO NOTHING;

DROP INDEX outbox_unsent_idx;
ALTER TABLE outbox DROP COLUMN sent_at, DROP COLUMN lease_until, RESET (fillfactor);
-- Event ids are random UUIDs made by outbox.Rows: an index enforcing their
-- uniqueness cost every insert a random-key B-tree insert and guarded
-- against nothing that can happen. Nothing looks rows up by event id.
ALTER TABLE outbox DROP CONSTRAINT outbox_event_id_key;

-- +goose Down
ALTER TABLE outbox ADD CONSTRAINT outbox_event_id_key UNIQUE (event_id);
ALTER TABLE outbox ADD COLUMN sent_at timestamptz, ADD COLUMN lease_until timestamptz, SET (fillfactor = 50);
-- Rows the relay has passed were sent; the rest are unsent again.
UPDATE outbox o SET sent_at = now()
WHERE (o.tx, o.id) <= (SELECT tx, id FROM outbox_readers WHERE name = 'relay');
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
DELETE FROM outbox_readers WHERE name = 'relay';

-- +goose Up
-- No more NOTIFY on outbox inserts. A transaction that ran NOTIFY takes a
-- database-wide lock in PreCommit_Notify and holds it through its commit
-- flush, so every transaction that wrote the outbox committed one at a
-- time, with no group commit. The relay is now woken in process
-- (outbox.Relay.Wake) by whoever commits outbox rows, and polls as a
-- fallback.
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();

-- A relay claims unsent rows by setting lease_until, publishes them holding
-- no lock, then marks the confirmed ones sent and clears the lease of the
-- rest. Rows whose lease has passed (their relay died) are anyone's again.
-- The column is in no index, so a claim can be a HOT update (no new index
-- entries, outbox_unsent_idx included) if the row's page has room for the
-- new version: hence the fillfactor. Measured, inserting 100 rows between
-- relay passes: at 100, no claim was HOT; at 50, every one was, and the
-- heap ended smaller, since non-HOT versions took new pages instead.
-- Marking a row sent can never be HOT (sent_at is in the partial index's
-- predicate); that was so before.
ALTER TABLE outbox ADD COLUMN lease_until timestamptz;
ALTER TABLE outbox SET (fillfactor = 50);

-- +goose Down
ALTER TABLE outbox RESET (fillfactor);
ALTER TABLE outbox DROP COLUMN lease_until;
-- +goose StatementBegin
CREATE FUNCTION outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
-- +goose StatementEnd
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

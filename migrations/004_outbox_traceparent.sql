-- +goose Up
-- The W3C traceparent of the request or message that wrote the event, so
-- the relay can pass the trace on as an AMQP header. NULL for rows written
-- without one (and for rows older than this column).
ALTER TABLE outbox ADD COLUMN traceparent text;

-- +goose Down
ALTER TABLE outbox DROP COLUMN traceparent;

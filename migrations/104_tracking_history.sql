-- +goose Up
-- The path travelled: every fix the ingest took from a rider on a
-- delivery, one row per delivery it serves, written by the history writer
-- in batches (COPY). Partitioned by the day (UTC) the ingest took the fix,
-- so that retention (TRACKING_HISTORY_DAYS) drops whole partitions instead
-- of deleting rows; the writer creates the coming days' partitions and
-- drops the expired ones (services/tracking/history.go). The partition key
-- is the ingest's clock, not the rider's (ts), which a phone may have
-- wrong by any amount.
CREATE TABLE rider_fixes (
    order_id  uuid             NOT NULL,
    rider_id  text             NOT NULL,
    seq       bigint           NOT NULL,
    at        timestamptz      NOT NULL,
    ts        timestamptz      NOT NULL,
    lat       double precision NOT NULL,
    lng       double precision NOT NULL,
    heading   real             NOT NULL,
    speed_kmh real             NOT NULL
) PARTITION BY RANGE (at);
-- A delivery's path, and its rider's latest fix.
CREATE INDEX rider_fixes_order_idx ON rider_fixes (order_id, seq);

-- A customer connecting reads the rider's latest fix from the history;
-- the per-rider latest position it replaces cost an upsert per rider a
-- second whether or not anyone was being delivered to.
DROP TABLE rider_positions;

-- +goose Down
CREATE TABLE rider_positions (
    rider_id   text PRIMARY KEY,
    lat        double precision NOT NULL,
    lng        double precision NOT NULL,
    heading    double precision NOT NULL,
    speed_kmh  double precision NOT NULL,
    seq        bigint           NOT NULL,
    ts         timestamptz      NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now()
);
DROP TABLE rider_fixes;

-- The open-saga gauges (sagas.metrics) read only sagas not yet terminal, every few seconds:
-- a partial index keeps that read proportional to the open sagas, not to all of them.
CREATE INDEX sagas_open_step ON {schema}.sagas (step, updated_at, started_at)
    WHERE status NOT IN ('CONFIRMED', 'CANCELLED', 'REJECTED');

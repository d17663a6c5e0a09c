-- No statement filters, joins or groups on an event's summary: ANALYZE need not sample it.
ALTER TABLE {schema}.timeline ALTER COLUMN summary SET STATISTICS 0;

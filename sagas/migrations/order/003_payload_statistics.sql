-- No statement filters, joins or groups on an order's items or its request hash (a request
-- is found by its order id, then compared): ANALYZE need not sample and summarise them.
ALTER TABLE {schema}.orders ALTER COLUMN items SET STATISTICS 0, ALTER COLUMN request_hash SET STATISTICS 0;

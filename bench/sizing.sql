-- Bytes per request, and index build time per million requests
-- (docs/operations.md). Run with psql against an empty, migrated database:
--   psql "$URL" -v n=100000 -v big=1000000 -f bench/sizing.sql
-- Request bodies ~200 bytes, response bodies ~350 bytes, one attempt each
-- (two events: claimed, completed). Figures: bench/RESULTS.md, "Sizing".
\timing off
\set QUIET on
INSERT INTO files (filename, template_count, size_bytes, models)
  VALUES ('sizing.jsonl', :n, 0, '{sizing}') RETURNING id AS file_id \gset
INSERT INTO request_templates (file_id, line, custom_id, endpoint, method, path, body, model)
  SELECT :'file_id', g, 'req-' || g, 'https://api.example.com', 'POST', '/v1/chat/completions',
    '{"model":"sizing","messages":[{"role":"user","content":"' || repeat('x', 140) || '"}]}', 'sizing'
  FROM generate_series(1, :n) g;
INSERT INTO batches (file_id, completion_window, max_retries, initial_backoff_ms, max_backoff_ms,
    total_count, pending_count, expires_at)
  VALUES (:'file_id', '24h', 5, 1000, 60000, :n, :n, now() + interval '1 day')
  RETURNING id AS batch_id \gset
INSERT INTO requests (batch_id, line, custom_id, endpoint, method, path, body, model)
  SELECT :'batch_id', line, custom_id, endpoint, method, path, body, model
  FROM request_templates WHERE file_id = :'file_id';
-- Claimed, then completed: the trigger writes the two events and the counters.
UPDATE requests SET state = 'leased', attempt = 1, lease_token = nextval('lease_token_seq'),
  lease_holder = 'sizing', lease_expires_at = now() + interval '30 seconds';
UPDATE requests SET state = 'completed', lease_holder = NULL, lease_expires_at = NULL,
  response_status = 200, response_headers = '{"content-type":"application/json"}',
  response_body = convert_to('{"id":"chatcmpl-1","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"' || repeat('y', 250) || '"}}]}', 'UTF8'),
  finished_at = now();
VACUUM FULL requests;
VACUUM FULL request_events;
VACUUM FULL request_templates;
\echo 'bytes per request: table (with TOAST), indexes'
SELECT relname, round(pg_table_size(oid)::numeric / :n) AS table_bytes,
  round(pg_indexes_size(oid)::numeric / :n) AS index_bytes,
  (SELECT count(*) FROM request_events) AS events
FROM pg_class WHERE relname IN ('requests', 'request_events', 'request_templates') ORDER BY 1;

-- A backlog of :big requests, then the index builds a migration would run.
TRUNCATE request_events;
INSERT INTO requests (batch_id, line, custom_id, endpoint, method, path, body, model)
  SELECT :'batch_id', :n + g, 'big-' || g, 'https://api.example.com', 'POST', '/v1/chat/completions',
    '{"model":"sizing","messages":[{"role":"user","content":"' || repeat('x', 140) || '"}]}', 'sizing'
  FROM generate_series(1, :big) g;
ANALYZE requests;
\echo 'index builds on the backlog (requests rows below)'
SELECT count(*) AS requests_rows FROM requests;
\timing on
CREATE INDEX sizing_pending_batch ON requests (model, batch_id, created_at, line) WHERE state = 'pending';
CREATE INDEX sizing_batch_state ON requests (batch_id, state, line);
\timing off
DROP INDEX sizing_pending_batch;
DROP INDEX sizing_batch_state;

-- The trace context of the request that enqueued a job (a JSON object of
-- W3C propagation fields), continued by the worker that runs it. NULL when
-- tracing is off.
ALTER TABLE jobs ADD COLUMN trace_context TEXT;

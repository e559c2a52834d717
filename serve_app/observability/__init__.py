"""What the service tells its operators: Prometheus metrics, JSON logs, request ids.

- `metrics`: the metrics (mirrored into Ray's metrics inside a Ray worker) and the functions that
  record them, e.g. `record_engine_step`, the engine loop's step observer;
- `request_ids`: the id of the HTTP request being served (a contextvar) and how one is accepted or made;
- `logs`: one JSON object per log line, with the request id;
- `middleware`: `RequestIdMiddleware`, the one place a request gets its id, and `MetricsMiddleware`
  (request metrics and the access log);
- `http`: `instrument_app`, which `create_app` calls: both middlewares and `GET /metrics`;
- `metered_engine`: `MeteredEngine`, which records frames, audio and real-time factor from any engine.
"""

"""The services: the guarded OpenAI-compatible chat API (`stars-guard serve`), lockstep batching of
concurrent requests, the TEI-compatible reward service (`stars-guard serve-reward`) and the live
dashboard. Never imports LangChain. Needs `pip install 'stars-guard[server]'`.

The chat service, from the outside in (each module has one job):

- `app`: `create_app` / `serve`, the routes and their handlers; `settings`: `ServeSettings`, shared by both;
- `middleware`: API key and body size; `errors`: `OpenAIError` and the mapping of every failure to it;
- `schema`: the OpenAI request as pydantic models, checked against the operator's `OverridePolicy`;
- `admission`: worker slots and the waiting line (429, 503); `service`: `ChatService`, the worker
  that runs a request's engine, its outcome counters and `/health`; `metrics`: its Prometheus metrics;
- `responses`: `chat.completion` and chunk bodies; `sse`: the event stream, client disconnects;
- `stars_guard.bridge` (core): the one hand-over between worker threads and the event loop (the
  chat service, the reward service and the LangChain layer);
- `batching`: the one micro-batcher (`BatchingReward` for lockstep rounds, and the reward service's);
- `lockstep`: concurrent requests drafting in shared batched rounds.
"""

"""A minimal Django project the benchmarks serve with uvicorn.

``BENCH_VARIANT`` picks what a websocket connection costs:

- ``bare``: a plain ``AsyncWebsocketConsumer`` that joins a group via ``groups``;
- ``presence``: the same consumer with ``PresenceConsumerMixin`` (this package);
- ``peer``: the database-backed ``django-channels-more-than-present`` (run from
  its own virtual environment, since it uses the same import name).
"""

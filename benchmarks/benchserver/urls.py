"""No HTTP views: the benchmarks speak websocket only."""

urlpatterns: list = []

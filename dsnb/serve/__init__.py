"""Serving, A/B testing and online learning (notebook 10).

``engine`` (one model for serving, hot swap), ``server`` (OpenAI-compatible FastAPI app), ``runner``
(uvicorn in a background thread), ``assignment`` (sticky hashed A/B buckets), ``response_cache`` (TTL / Redis),
``store`` (SQLAlchemy event log), ``gateway`` (A/B routing, balancing, failover), ``abtest`` (the
statistics), ``online`` (feedback -> preference pairs -> a gated update), ``latency`` (percentiles, the
bandwidth-bound estimate for a real model), ``simulate`` (simulated users). ``python -m dsnb.serve``
runs a model server or a gateway from the command line.
"""

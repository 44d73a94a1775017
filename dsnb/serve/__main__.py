"""Command line: ``python -m dsnb.serve model ...`` (a model server) and ``python -m dsnb.serve gateway ...`` (notebook 10).

    python -m dsnb.serve model --model dsnb-tiny-sft --version sft-v2 --port 8001
    python -m dsnb.serve gateway --variant A=http://127.0.0.1:8001 --variant B=http://127.0.0.1:8002 --port 8000

Both bind 127.0.0.1 unless ``--host`` says otherwise. The model server requires the API key in
``$DSNB_API_KEY`` when that is set (and the gateway sends it to its backends). The gateway requires
one of its own client keys from ``$DSNB_GATEWAY_KEYS`` (comma-separated); ``--open-access`` turns
that off, and the gateway says so at start-up. ``REDIS_URL`` and ``DATABASE_URL`` switch the
gateway's cache and event store to Redis and PostgreSQL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from dsnb.serve.store import EventStore

API_KEY_ENV = "DSNB_API_KEY"


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _variants(specs: list[str]) -> dict[str, list[str]]:
    """``--variant NAME=URL[,URL...]`` specs as {name: [backend URL, ...]}; every URL must be http(s)://HOST[:PORT]."""
    pools: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, urls = spec.partition("=")
        if not sep or not name or not urls:
            raise SystemExit(f"--variant {spec!r}: write NAME=URL[,URL...], e.g. A=http://127.0.0.1:8001")
        for url in (u for u in urls.split(",") if u):
            if not _is_http_url(url):
                raise SystemExit(f"--variant {spec!r}: {url!r} is not an http(s) URL of a model server; write "
                                 "NAME=URL[,URL...], e.g. A=http://127.0.0.1:8001")
            pools.setdefault(name, []).append(url)
    return pools


def _open_store(database: str) -> EventStore:
    """The gateway's event store: ``$DATABASE_URL``, else the SQLite file ``database`` (its directory must exist)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from dsnb.serve.store import DATABASE_ENV, EventStore, database_url

    if not os.environ.get(DATABASE_ENV):
        path = Path(database)
        if path.is_dir():
            raise SystemExit(f"--database {database}: is a directory; give the SQLite file, e.g. {path / 'events.sqlite'}")
        if not path.parent.is_dir():
            raise SystemExit(f"--database {database}: the directory {path.parent} does not exist; create it "
                             "(mkdir -p) or choose another path")
    url = database_url(database)
    try:
        return EventStore(url)
    except SQLAlchemyError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise SystemExit(f"cannot open the event store at {shown}: {getattr(exc, 'orig', None) or exc}; check "
                         f"--database or ${DATABASE_ENV}") from None


def _weights(spec: str | None, variants: list[str]) -> dict[str, float]:
    if not spec:
        return {v: 1.0 for v in variants}
    out = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise SystemExit(f"--weights {spec!r}: write NAME=NUMBER,..., e.g. A=50,B=50") from None
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen server in the foreground (Ctrl-C stops it)."""
    import uvicorn

    from dsnb.serve.runner import KEEP_ALIVE_S

    parser = argparse.ArgumentParser(prog="python -m dsnb.serve", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model", help="serve one model behind the OpenAI-compatible API")
    m.add_argument("--model", default="dsnb-tiny-sft", help="dsnb-tiny, dsnb-tiny-sft, a checkpoint dir or hub id")
    m.add_argument("--adapter", help="a LoRA adapter directory, merged into the model")
    m.add_argument("--name", help="the model id clients send (default: --model)")
    m.add_argument("--version", default="v1", help="model version reported in responses and metrics")
    m.add_argument("--max-batch", type=int, default=16,
                   help="requests generated together (dynamic batching); 1 answers one request at a time")
    m.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long an idle engine waits for more requests to join a batch")
    g = sub.add_parser("gateway", help="A/B gateway and load balancer in front of model servers")
    g.add_argument("--variant", action="append", required=True, help="NAME=URL[,URL...]; repeat per variant")
    g.add_argument("--weights", help="NAME=WEIGHT,... (default: equal)")
    g.add_argument("--experiment", default="experiment", help="experiment name (stored with every request)")
    g.add_argument("--salt", default="salt-1", help="hash salt; a new salt reshuffles users")
    g.add_argument("--database", default="events.sqlite", help="SQLite file when DATABASE_URL is not set")
    g.add_argument("--cache-ttl", type=float, default=300.0, help="seconds a cached answer lives")
    g.add_argument("--open-access", action="store_true",
                   help="accept clients without a key (default: keys from $DSNB_GATEWAY_KEYS are required)")
    for p in (m, g):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    api_key = os.environ.get(API_KEY_ENV) or None
    store = None
    if args.command == "model":
        from dsnb.model.resolve import TINY_SFT_NAME
        from dsnb.serve.engine import ModelEngine
        from dsnb.serve.server import create_app

        if args.model == TINY_SFT_NAME:  # its builder is training code: a fresh machine trains it once (about 30 s)
            import dsnb.train  # noqa: F401  (registers the builder with dsnb.model.resolve)
        engine = ModelEngine.load(args.model, args.version, args.adapter, args.name,
                                  max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
        app = create_app(engine, api_key=api_key)
    else:
        from dsnb.serve.gateway import Experiment, Gateway, client_keys_from
        from dsnb.serve.response_cache import make_cache

        pools = _variants(args.variant)
        experiment = Experiment(args.experiment, args.salt, _weights(args.weights, list(pools)))
        try:
            keys = client_keys_from(None, args.open_access)
        except ValueError as exc:
            raise SystemExit(f"{exc} (or start with --open-access on a trusted network)") from None
        store = _open_store(args.database)
        app = Gateway(experiment, pools, make_cache(args.cache_ttl), store, backend_api_key=api_key,
                      client_keys=keys or None, open_access=args.open_access).app
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_keep_alive=KEEP_ALIVE_S)
    finally:
        if store is not None:
            store.close()  # commit every queued row before exiting
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m gateway --config CONFIG`` runs the node; ``… status`` lists studies; ``… echo NAME`` tests a peer."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config

LOG_FORMAT = "[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "status", "echo"),
                        help="serve (default): run the node; status: list studies; echo: C-ECHO a destination")
    parser.add_argument("name", nargs="?", help="for echo: a destination name from the config")
    parser.add_argument("--config", type=Path, required=True, help="the node's YAML/JSON configuration")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.add_argument("--limit", type=int, default=50, help="status: how many recent studies")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT)
    if config.log_level != "DEBUG":  # pynetdicom logs every association and message at INFO
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if args.command == "status":
        return status(config, args.limit, args.json)
    if args.command == "echo":
        return echo(config, args.name)
    return serve(config)


def serve(config: GatewayConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain."""
    from gateway.node import Node

    log = logging.getLogger("gateway")
    try:
        node = Node(config)
    except (OSError, sqlite3.Error) as error:
        log.error("cannot open the spool %s or its database %s: %s", config.spool, config.database, error)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        node.start()
    except OSError as error:
        log.error("cannot start (listening on %s:%d, spool %s): %s", config.bind_address, config.port, config.spool,
                  error)
        return 1
    stop.wait()
    node.stop()
    return 0


def status(config: GatewayConfig, limit: int, as_json: bool) -> int:
    """The recent studies with state, timings and error (reads the database; works while the node runs)."""
    from gateway.store import Store

    if not config.database.exists():
        print("[]" if as_json else f"no database yet at {config.database}: the node has not run with this config")
        return 0
    store = Store(config.database)
    studies = store.studies(limit)
    if as_json:
        print(json.dumps([{**asdict(study), "sends": [asdict(send) for send in store.sends(study.id)]}
                          for study in studies], indent=2))
        return 0
    print(f"{'id':>4}  {'state':<9} {'from':<16} {'inst':>5}  {'received':<19} {'run s':>6}  study / result / error")
    for study in studies:
        received = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(study.last_arrival))
        run = f"{study.run_seconds:.1f}" if study.run_seconds is not None else "-"
        detail = study.error or study.result or ""
        print(f"{study.id:>4}  {study.state:<9} {study.calling_ae:<16} {study.instances:>5}  {received:<19} {run:>6}  "
              f"{study.study_uid}  {detail}")
    return 0


def echo(config: GatewayConfig, name: str | None) -> int:
    """C-ECHO a configured DIMSE destination with the node's AE title (connectivity check for the administrator)."""
    from pynetdicom import AE

    destination = config.destinations.get(name or "")
    if destination is None or destination.kind != "dimse":
        names = ", ".join(n for n, d in config.destinations.items() if d.kind == "dimse")
        print(f"echo needs a DIMSE destination name from the config: {names}", file=sys.stderr)
        return 2
    ae = AE(ae_title=config.ae_title)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        why = ("rejected (is our AE title known to it?)" if assoc.is_rejected
               else "failed (is it running, is the port right?)")
        print(f"{name} ({destination.ae_title}@{destination.host}:{destination.port}): association {why}",
              file=sys.stderr)
        return 1
    result = assoc.send_c_echo()
    assoc.release()
    ok = getattr(result, "Status", None) == 0
    print(f"{name} ({destination.ae_title}@{destination.host}:{destination.port}): "
          f"{'echo OK' if ok else 'echo failed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

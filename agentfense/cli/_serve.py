"""``agentfense serve`` (the server in the foreground) and ``agentfense doctor``."""

from __future__ import annotations

import argparse
import logging
import sys

import anyio

from .._extras import server_extra_problem
from ._exits import EXIT_FAILED


def serve(args: argparse.Namespace) -> int:
    problem = server_extra_problem()
    if problem is not None:  # before anything starts: not a stopped filesystem later
        print(f"{args.prog}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    from ..server.app import serve as serve_forever
    from ..server.config import load_config

    overrides = {
        "listen": args.listen,
        "state_dir": args.state_dir,
        "max_output_bytes": args.max_output_bytes,
        "default_timeout": args.default_timeout,
        "log_level": args.log_level,
        "metrics_listen": args.metrics_listen,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "allow_insecure_listen": args.insecure_listen,
    }
    config = load_config(args.config, overrides=overrides)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    anyio.run(serve_forever, config)
    return 0


def doctor(args: argparse.Namespace) -> int:
    from ..server.doctor import run_checks

    failed = False
    for check in run_checks():
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        print(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok:
            print(f"       fix: {check.fix}")
            failed = failed or check.required
    if failed:
        print("this machine cannot serve sandboxes yet: fix what FAIL says (the client works)")
        return 1
    print("this machine can serve sandboxes (a warn line is a feature it cannot offer)")
    return 0

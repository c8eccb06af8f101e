"""`python -m devservices.anthropic --host 127.0.0.1 --port PORT --api-key-file FILE`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aiohttp import web

from devservices.anthropic.server import AccessLogger, build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devservices.anthropic", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--api-key-file",
        type=Path,
        required=True,
        help="file holding the one accepted API key (first line); never given on the command line, which ps shows",
    )
    parser.add_argument(
        "--control-from",
        action="append",
        default=[],
        help="an address besides loopback allowed to use /_control/ (repeatable): the orchestrator side's own",
    )
    args = parser.parse_args(argv)
    try:
        lines = args.api_key_file.read_text().splitlines()
    except OSError as exc:
        parser.error(f"cannot read --api-key-file: {exc.strerror}")
    api_key = lines[0].strip() if lines else ""
    if not api_key:
        parser.error("--api-key-file is empty")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_app(api_key=api_key, control_from=frozenset(args.control_from))
    logging.getLogger("devservices.anthropic").info(
        "scripted Messages API listening on http://%s:%s (ANTHROPIC_BASE_URL)", args.host, args.port
    )
    web.run_app(app, host=args.host, port=args.port, print=None, access_log_class=AccessLogger)


if __name__ == "__main__":
    main()

"""`python -m devservices.github --host 127.0.0.1 --port PORT --data DIR --token TOKEN [--org ORG]`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from aiohttp import web

from devservices.github.server import build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devservices.github", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--data", type=Path, required=True, help="where the bare repositories and metadata live")
    parser.add_argument(
        "--token",
        default=os.environ.get("GITHUB_TOKEN"),
        help="the one token accepted (default: $GITHUB_TOKEN); prefer the environment, argv is visible to ps",
    )
    parser.add_argument("--org", action="append", help="an organization that exists (repeatable; default local-org)")
    parser.add_argument("--user", default="local-user", help="login of the token's owner")
    parser.add_argument("--generate-delay", type=float, default=0.5, help="seconds before a generated repo has content")
    parser.add_argument("--rate-limit", type=int, default=5000, help="API calls per hour before 403")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token or GITHUB_TOKEN is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_app(
        args.data,
        token=args.token,
        user=args.user,
        orgs=args.org,
        generate_delay=args.generate_delay,
        rate_limit_per_hour=args.rate_limit,
    )
    # The access log holds the request line and status only: never headers, so never a token.
    web.run_app(app, host=args.host, port=args.port, print=None, access_log_format='%a "%r" %s %b %Tfs')


if __name__ == "__main__":
    main()

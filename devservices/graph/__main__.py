"""`python -m devservices.graph --host 127.0.0.1 --port PORT --data DIR --tenant TENANT_ID --client-id CLIENT_ID
--client-secret-file FILE [--token-ttl SECONDS]`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aiohttp import web

from devservices.graph.server import AccessLogger, build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devservices.graph", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8086)
    parser.add_argument("--data", type=Path, required=True, help="where directory.json (applications, ...) lives")
    parser.add_argument("--tenant", required=True, help="the one tenant (directory) id the token endpoint serves")
    parser.add_argument("--client-id", required=True, help="client id of the one confidential client (the caller)")
    parser.add_argument(
        "--client-secret-file",
        type=Path,
        required=True,
        help="file holding that client's secret (one line); never given on the command line, which ps shows",
    )
    parser.add_argument("--token-ttl", type=int, default=3599, help="access token lifetime in seconds")
    args = parser.parse_args(argv)
    try:
        secret = args.client_secret_file.read_text().strip("\r\n")
    except OSError as exc:
        parser.error(f"cannot read --client-secret-file: {exc.strerror}")
    if not secret:
        parser.error("--client-secret-file is empty")
    if args.token_ttl < 1:
        parser.error("--token-ttl must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_app(
        args.data, tenant=args.tenant, client_id=args.client_id, client_secret=secret, token_ttl=args.token_ttl
    )
    logging.getLogger("devservices.graph").info(
        "tenant %s, client %s, token lifetime %ss, listening on http://%s:%s",
        args.tenant,
        args.client_id,
        args.token_ttl,
        args.host,
        args.port,
    )
    web.run_app(app, host=args.host, port=args.port, print=None, access_log_class=AccessLogger)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A workspace app stand-in that rewrites a TinyDB database as fast as it can, for the consistency tests.

Generation g puts g in every document, so a clone that mixes two versions shows it, and its length varies,
so an in-place write over a longer version would leave a tail. --style locked follows the lock convention
(flock LOCK_EX on <db>.lock around each write) and alternates in-place writes, split by a pause in which a
reader ignoring the lock would see half a file, with writes by temporary file and rename. --style
unlocked-rename ignores the lock and only renames. Prints "ready" once it holds the lock file, and
"wrote <n>" when --seconds have passed or --stop-file exists.
"""

import argparse
import fcntl
import json
import os
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("database")
    parser.add_argument("--style", choices=["locked", "unlocked-rename"], default="locked")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--stop-file")
    args = parser.parse_args()
    locked = args.style == "locked"
    lock = os.open(args.database + ".lock", os.O_RDONLY | os.O_CREAT, 0o600)
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    generation = 0
    while time.monotonic() < deadline and not (args.stop_file and os.path.exists(args.stop_file)):
        generation += 1
        rows = {str(i): {"generation": generation, "pad": "x" * (generation % 97)} for i in range(1, 150)}
        data = json.dumps({"meta": {"1": {"generation": generation}}, "rows": rows}).encode()
        if locked:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if locked and generation % 2:
                with open(args.database, "r+b") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    time.sleep(0.001)
                    handle.write(data[len(data) // 2 :])
                    handle.truncate()
            else:
                temporary = args.database + ".writing"
                with open(temporary, "wb") as handle:
                    handle.write(data)
                os.replace(temporary, args.database)
        finally:
            if locked:
                fcntl.flock(lock, fcntl.LOCK_UN)
    print(f"wrote {generation}", flush=True)


if __name__ == "__main__":
    main()

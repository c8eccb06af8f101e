#!/usr/bin/env python3
"""Install the pinned Ansible collections from the PyPI `ansible` wheel, offline from Galaxy.

Reads collections/requirements.yml, downloads the pinned wheel once into .cache/wheels (pip),
extracts only the listed collection folders into .ansible/collections and verifies each version
from its MANIFEST.json. Idempotent: does nothing when every listed version is already in place.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "collections" / "requirements.yml"
TARGET = ROOT / ".ansible" / "collections" / "ansible_collections"
CACHE = ROOT / ".cache" / "wheels"
# The PyPI wheel that carries every community collection; its version fixes theirs.
SOURCE_WHEEL = "ansible==12.3.0"


def read_requirements() -> tuple[str, dict[str, str]]:
    """Parse the requirements file (name/version pairs) without needing PyYAML in the bootstrap interpreter."""
    wheel = SOURCE_WHEEL
    pins: dict[str, str] = {}
    name = ""
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("- name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("version:") and name:
            pins[name] = line.split(":", 1)[1].strip()
            name = ""
    if not wheel or not pins:
        sys.exit(f"{REQUIREMENTS}: lists no collection")
    return wheel, pins


def installed_version(name: str) -> str | None:
    namespace, coll = name.split(".", 1)
    manifest = TARGET / namespace / coll / "MANIFEST.json"
    if not manifest.is_file():
        return None
    return str(json.loads(manifest.read_text())["collection_info"]["version"])


def main() -> int:
    wheel_spec, pins = read_requirements()
    missing = {n: v for n, v in pins.items() if installed_version(n) != v}
    if not missing:
        print(f"collections: all {len(pins)} pinned collections present")
        return 0
    package, version = wheel_spec.split("==")
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob(f"{package}-{version}-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(CACHE),
                wheel_spec,
            ],
            check=True,
        )
        wheels = sorted(CACHE.glob(f"{package}-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as archive:
        for name in missing:
            namespace, coll = name.split(".", 1)
            prefix = f"ansible_collections/{namespace}/{coll}/"
            dest = TARGET / namespace / coll
            shutil.rmtree(dest, ignore_errors=True)
            members = [m for m in archive.namelist() if m.startswith(prefix)]
            if not members:
                sys.exit(f"{wheel_spec} has no collection {name}")
            for member in members:
                archive.extract(member, TARGET.parent)
    wrong = {n: (v, installed_version(n)) for n, v in pins.items() if installed_version(n) != v}
    if wrong:
        sys.exit(f"collection versions differ from collections/requirements.yml: {wrong}")
    print(f"collections: installed {', '.join(sorted(missing))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

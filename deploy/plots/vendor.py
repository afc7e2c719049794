"""Rebuild vega-offline.html, the page template for `dvc plots show --html-template` (`make plots`).

dvc's own page loads vega, vega-lite and vega-embed from a CDN, so it stays blank without a network. This
template has the three libraries inlined, verbatim, from their npm packages at the versions pinned below
(the newest releases of the major versions that DVC 3.67's renderer loads: vega 5, vega-lite 5,
vega-embed 6), each tagged with its sha256 so that `sha256sum package/build/vega.min.js` after an
`npm pack vega@5.33.1` gives the same digest. Their BSD-3-Clause licences sit next to the template
(LICENSE.<package>). After changing a version, with npm on the PATH:

    python deploy/plots/vendor.py
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "vega-offline.html"
# package -> (version, the minified browser build inside its npm tarball)
PACKAGES = {
    "vega": ("5.33.1", "build/vega.min.js"),
    "vega-lite": ("5.23.0", "build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "build/vega-embed.min.js"),
}
# dvc_render replaces these anywhere in the template: the inlined code must not contain them, and the
# template leaves out the one for dvc's CDN script tags
PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")

HEAD = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- The template of `make plots` (dvc plots show --html-template deploy/plots/vega-offline.html):
         vega, vega-lite and vega-embed inlined from npm (BSD-3-Clause, see LICENSE.* next to this file),
         so the page draws with no network. Rebuilt by deploy/plots/vendor.py; do not edit by hand. -->
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
"""
TAIL = """</head>
<body>
    {plot_divs}
</body>
</html>
"""


def script_tag(package: str, version: str, path: str, code: str) -> str:
    for marker in (*PLACEHOLDERS, "</script"):
        if marker in code.lower():
            raise SystemExit(f"{package}@{version} {path} contains {marker!r}: it cannot be inlined as is")
    digest = hashlib.sha256(code.encode("utf-8")).hexdigest()
    return (f'    <script data-package="{package}@{version}" data-file="{path}" data-sha256="{digest}">'
            f"{code}</script>\n")


def main() -> int:
    npm = shutil.which("npm")
    if npm is None:
        print("npm is needed to fetch the packages", file=sys.stderr)
        return 1
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}@{version}" for name, (version, _) in PACKAGES.items()]
        subprocess.run([npm, "pack", "--silent", *specs], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        for name, (version, path) in PACKAGES.items():
            with tarfile.open(Path(tmp) / f"{name}-{version}.tgz") as tar:
                code = tar.extractfile(f"package/{path}").read().decode("utf-8")
                scripts.append(script_tag(name, version, path, code))
                try:
                    licence = tar.extractfile("package/LICENSE").read()
                except KeyError:  # the vega package ships without one: LICENSE.vega comes from its repository
                    if not (HERE / f"LICENSE.{name}").exists():
                        print(f"{name}@{version} has no LICENSE: add LICENSE.{name} from its repository",
                              file=sys.stderr)
                        return 1
                else:
                    (HERE / f"LICENSE.{name}").write_bytes(licence)
    TEMPLATE.write_text(HEAD + "".join(scripts) + TAIL, encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

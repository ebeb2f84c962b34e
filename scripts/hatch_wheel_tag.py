"""Hatch build hook: tags the wheel for the platform of the native addons it carries.

The wheel is not pure: `_node/node_modules/` holds zstd's native addon for one platform, the one
`npm ci` installed it for (zeromq's prebuilt addons cover several). A `py3-none-any` tag would let
pip install it where that addon cannot load, so the tag names that platform instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ADDONS = Path("kernel-plugin/python/kernel_checkpoint/_node/node_modules/@mongodb-js")
# Node's names for the machine, as in the addon's package name, to the wheel's.
MACHINES = {"x64": "x86_64", "arm64": "aarch64"}
ADDON_PACKAGE = re.compile(r"zstd-linux-(?P<arch>[a-z0-9]+)-gnu$")


def platform_tag(root: Path) -> str:
    """`linux_<machine>` of the bundled zstd addon; exactly one must be there."""
    found = [
        match["arch"]
        for entry in sorted((root / ADDONS).glob("zstd-linux-*"))
        if (match := ADDON_PACKAGE.search(entry.name))
    ]
    if len(found) != 1 or found[0] not in MACHINES:
        raise RuntimeError(
            f"The wheel needs exactly one bundled zstd addon for glibc Linux in {ADDONS}, "
            f"found {found or 'none'}: run `npm run build:supervisor` on the target platform."
        )
    return f"linux_{MACHINES[found[0]]}"


class WheelTagHook(BuildHookInterface):
    PLUGIN_NAME = "wheel-tag"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["tag"] = f"py3-none-{platform_tag(Path(self.root))}"

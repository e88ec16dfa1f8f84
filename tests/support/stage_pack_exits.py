"""A fake stage pack whose import calls sys.exit(), as a script's module does.

An entry point aimed at a command-line module instead of the pack's register
function does this; loading it must fail the pack, not end the process.
"""

from __future__ import annotations

import sys

sys.exit("usage: stage_pack_exits [--help]")


def register(registry: object) -> None:
    """Never reached."""

"""The rich console the command line prints its tables on: at least 120 columns wide, so tables stay whole
in logs and narrow terminals."""

from __future__ import annotations

import shutil

from rich.console import Console

console = Console(width=max(120, shutil.get_terminal_size((140, 40)).columns))

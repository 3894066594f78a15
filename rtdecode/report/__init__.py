"""``rtdecode report``: the comparisons of the README, run on one session and zoo, written as
Markdown tables and PNG plots.

- :mod:`.sections` computes each comparison (JSON-ready dicts; every figure from running
  code);
- :mod:`.plots` draws the figures (matplotlib, Agg);
- :mod:`.markdown` writes ``REPORT.md``, including the list of where we lose.

:func:`build_report` runs them all and :func:`write_report` writes ``REPORT.md``,
``report.json`` and the PNGs.
"""

from __future__ import annotations

from .markdown import write_report
from .sections import ReportOptions, build_report

__all__ = ["ReportOptions", "build_report", "write_report"]

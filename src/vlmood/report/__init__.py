"""Reports from evaluation results: tables, figures, a self-contained HTML page and Markdown.

``write_report(["runA/results.json", "runB"], "report/")`` writes ``report/index.html`` (open it in
any browser, offline), ``report/report.md`` and ``report/figures/*.png`` (150 dpi, reusable in
papers). Needs the ``report`` extra (matplotlib).
"""

from vlmood.report.build import write_report
from vlmood.report.figures import roc_curve
from vlmood.report.load import SUPPORTED_SCHEMA, ReportError, Run, load_run, load_runs

__all__ = ["SUPPORTED_SCHEMA", "ReportError", "Run", "load_run", "load_runs", "roc_curve", "write_report"]

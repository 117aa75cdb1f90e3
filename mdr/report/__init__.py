"""`mdr report RUN_DIR`: one HTML page (and PNGs) of a run folder, to look at instead of reading logs.

Modules: `discovery` (the model folders, data folders and reports under a run folder), `views` (the
numbers: metrics tables, attention per domain, curves), `plots` (the PNGs), `page` (the HTML page and
`build_report`, with what each section shows).
"""
from mdr.report.discovery import SCANN_JSON
from mdr.report.page import PAGE, REPORT_DIRNAME, build_report

__all__ = ["PAGE", "REPORT_DIRNAME", "SCANN_JSON", "build_report"]

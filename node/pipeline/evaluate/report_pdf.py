"""The evaluation report as a PDF (fpdf2, as the node's result reports), drawn from the JSON.

A4 pages: the model (name, version, weights checksum), the data set and how many cases were
evaluated or failed, the summary with 95% bootstrap intervals, the per-case table and each failed
case's reason, and how the figures were computed. Core font Helvetica: characters outside
Latin-1 print as '?'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

TITLE = "Model evaluation report"
_HEADINGS = FontFace(emphasis="BOLD", fill_color=(230, 230, 230))
_RED = (170, 0, 0)


def _latin1(text: object) -> str:
    return str(text).encode("latin-1", "replace").decode("latin-1")


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: Any, digits: int = 3) -> str:
    return "n/a" if not ci else f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def _value_ci(rate: dict[str, Any]) -> str:
    """'0.500 (0.00 to 1.00)', or 'n/a' where the data set does not define the rate."""
    return "n/a" if rate["value"] is None else f"{rate['value']:.3f} ({_ci(rate['ci95'], 2)})"


class _Pdf(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(format="A4")
        self._footer_text = footer_text
        self.set_margins(12, 12, 12)
        self.set_auto_page_break(True, margin=20)

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", "", 8)
        self.set_text_color(80)
        self.cell(0, 4, _latin1(f"{self._footer_text} - page {self.page_no()}/{{nb}}"),
                  align="C")

    def heading(self, text: str) -> None:
        self.ln(3)
        self.set_font("Helvetica", "B", 12)
        self.set_text_color(0)
        self.cell(0, 7, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def rows(self, rows: Sequence[Sequence[str]], widths: Sequence[float],
             headings: bool = True, size: int = 9) -> None:
        self.set_font("Helvetica", "", size)
        with self.table(col_widths=tuple(widths), text_align="LEFT", line_height=size * 0.5,
                        first_row_as_headings=headings, headings_style=_HEADINGS) as table:
            for values in rows:
                row = table.row()
                for value in values:
                    row.cell(_latin1(value))

    def paragraph(self, text: str, size: int = 9) -> None:
        self.set_font("Helvetica", "", size)
        self.multi_cell(0, size * 0.5, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _head(pdf: _Pdf, report: dict[str, Any]) -> None:
    m = report["model"]
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, _latin1(f"{TITLE}: {m['name']} {m['version']}"), new_x=XPos.LMARGIN,
             new_y=YPos.NEXT)
    pdf.set_text_color(*_RED)
    pdf.paragraph(report["notice"], size=10)
    pdf.set_text_color(0)
    pdf.heading("Model and data")
    pdf.rows([
        ("Model", f"{m['name']} {m['version']} ({m['task']}), run on {m['device']}"),
        ("Weights", f"{m['weights_file'] or 'none'}  sha256 {m['weights_sha256'] or '-'}"),
        ("Data", report["data"]),
        ("Cases", f"{report['cases_total']}: {report['cases_evaluated']} evaluated, "
                  f"{report['cases_failed']} failed"),
        ("Created", report["created"]),
    ], widths=(1, 5), headings=False)


def _segmentation(pdf: _Pdf, report: dict[str, Any]) -> None:
    labels = {"dice": ("Dice", 4), "hd95_mm": ("HD95 (mm)", 2),
              "volume_error_ml": ("Volume error (mL)", 1),
              "volume_error_pct": ("Volume error (%)", 2)}
    pdf.heading("Summary (mean and 95% bootstrap interval over the evaluated cases)")
    rows: list[tuple[str, ...]] = [("Segment", "Metric", "Mean", "95% interval", "n")]
    for segment, per in report["summary"].items():
        for key, (label, digits) in labels.items():
            s = per[key]
            rows.append((segment, label, _num(s["mean"], digits), _ci(s["ci95"], digits),
                         str(s["n"])))
    pdf.rows(rows, widths=(2.2, 2.4, 1.4, 2.6, 0.6))
    pdf.heading("Per case")
    rows = [("Case", "Segment", "Dice", "HD95 mm", "Volume mL", "Reference mL", "Error %")]
    for case in report["cases"]:
        if case["status"] != "ok":
            continue
        for segment, v in case["segments"].items():
            rows.append((case["case"], segment, _num(v["dice"], 4), _num(v["hd95_mm"], 2),
                         _num(v["volume_ml"], 1), _num(v["reference_ml"], 1),
                         _num(v["volume_error_pct"], 1)))
    pdf.rows(rows, widths=(2.4, 1.6, 1, 1.1, 1.3, 1.4, 1), size=8)


def _classification(pdf: _Pdf, report: dict[str, Any]) -> None:
    s = report["summary"]
    acc = s["accuracy"]
    pdf.heading("Summary (95% bootstrap intervals)")
    pdf.paragraph(f"Accuracy {_num(acc['value'])} (95% interval {_ci(acc['ci95'])}). "
                  "Per class, that class against all others:")
    rows = [("Class", "Cases", "Sensitivity", "Specificity", "ROC AUC")]
    for name, c in s["per_class"].items():
        rows.append((name, f"{c['positives']} of {c['positives'] + c['negatives']}",
                     *(_value_ci(c[k]) for k in ("sensitivity", "specificity", "roc_auc"))))
    pdf.rows(rows, widths=(3.2, 1.1, 2, 2, 2), size=8)
    pdf.heading("Confusion matrix (rows: true class, columns: predicted; count and fraction "
                "of the row)")
    short = [c.split(" (")[0] for c in s["classes"]]
    rows = [("true \\ predicted", *short)]
    for i, name in enumerate(short):
        cells = []
        for j, count in enumerate(s["confusion_matrix"]["counts"][i]):
            frac = s["confusion_matrix"]["row_fraction"][i][j]
            cells.append(f"{count}" if frac["value"] is None else
                         f"{count} ({frac['value']:.2f}; {_ci(frac['ci95'], 2)})")
        rows.append((name, *cells))
    pdf.rows(rows, widths=(1.6, *([2] * len(short))), size=8)
    pdf.heading("Per case")
    rows = [("Case", "Label", "Predicted", "Probability", "Correct")]
    for case in report["cases"]:
        if case["status"] == "ok":
            rows.append((case["case"], case["truth"].split(" (")[0],
                         case["predicted"].split(" (")[0],
                         _num(case["probabilities"][case["predicted"]]),
                         "yes" if case["correct"] else "no"))
    pdf.rows(rows, widths=(3.4, 1.8, 1.8, 1.2, 0.8), size=8)


def _failures_and_method(pdf: _Pdf, report: dict[str, Any]) -> None:
    failed = [c for c in report["cases"] if c["status"] != "ok"]
    if failed:
        pdf.heading(f"Failed cases ({len(failed)})")
        pdf.rows([("Case", "Reason")] + [(c["case"], c["error"]) for c in failed],
                 widths=(1.5, 5), size=8)
    i = report["intervals"]
    pdf.heading("Method")
    text = (f"Intervals: {i['method']}, {i['resamples']} resamples, seed {i['seed']}, "
            f"level {i['level']:.0%}. ")
    if report["task"] == "segmentation":
        text += ("Dice = 2|A and B| / (|A| + |B|). HD95: 95th percentile of the distances "
                 "(mm, with the voxel spacing) between the surface voxels of the two masks, "
                 "both directions pooled. Volume error: model volume less reference volume.")
    else:
        text += ("Predicted class: the most probable one. Sensitivity, specificity and ROC AUC "
                 "(Mann-Whitney, ties counted half) per class against all others; n/a where "
                 "the data set has no case of the class or none of the others.")
    pdf.paragraph(text, size=8)


def build_report_pdf(report: dict[str, Any]) -> bytes:
    m = report["model"]
    pdf = _Pdf(f"{TITLE}: {m['name']} {m['version']}. AI model evaluation: research use.")
    pdf.set_title(f"{TITLE}: {m['name']} {m['version']}")
    pdf.set_author("dicom-node")
    pdf.add_page()
    _head(pdf, report)
    if report["task"] == "segmentation":
        _segmentation(pdf, report)
    else:
        _classification(pdf, report)
    _failures_and_method(pdf, report)
    return bytes(pdf.output())

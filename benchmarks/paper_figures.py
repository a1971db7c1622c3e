"""The curves of Figures 2 and 3 of the AEVB paper, read from the vector paths of its PDF.

Kingma & Welling, "Auto-Encoding Variational Bayes", arXiv:1312.6114v10: Figure 2 (page 7) and
Figure 3 (page 8) are vector drawings, so every curve is a polyline in page coordinates. Each
panel's axes are calibrated from its own tick marks and tick labels (a least-squares line through
the labelled ticks; refused if a tick is off that line by more than 1% of the tick spacing), each
curve is told apart by its colour and dash pattern and named by the panel's legend, and is then
read on a grid of sample counts (linear interpolation in the axis's own scale). These are the
values the paper plotted, to about the thickness of a line (0.2 nats on MNIST's panels, 3 nats on
Frey Face's); a point outside a panel's range is not read (``None``).

Needs the PDF (``--pdf``) and PyMuPDF (``pip install pymupdf``); writes
``benchmarks/results/paper_figures.json``, which the comparison benchmark
(:mod:`aevb_vs_wake_sleep`) reads.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

OUTPUT = Path(__file__).resolve().parent / "results" / "paper_figures.json"
SOURCE = "Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114v10"
#: Where every curve is read, in training samples evaluated: 20 points per decade on a log axis
#: (10^6 and 10^7 among them), every million on a linear one.
GRID_LOG = [round(10 ** (k / 20)) for k in range(80, 181)]
GRID_LINEAR = [k * 10**6 for k in range(0, 101)]
#: Figure number: (0-based page of arXiv v10, log x-axis, x-label unit)
FIGURES = {2: (6, True, 1), 3: (7, False, 10**6)}
#: The paper's legend names, as this project names the methods and splits.
METHODS = {"AEVB": "aevb", "Wake-Sleep": "wake-sleep", "MCEM": "mcem"}
DATASETS = {"MNIST": "mnist", "Frey Face": "frey-face"}


@dataclass(frozen=True)
class Axis:
    """value = offset + scale * page coordinate (of log10(value) on a log axis)."""

    offset: float
    scale: float
    log: bool

    def value(self, coordinate: float) -> float:
        linear = self.offset + self.scale * coordinate
        return 10**linear if self.log else linear

    def coordinate(self, value: float) -> float:
        return ((math.log10(value) if self.log else value) - self.offset) / self.scale


def calibrate(ticks: Sequence[float], labels: Sequence[tuple[float, float]], log: bool) -> Axis:
    """The axis through ``labels`` ((page coordinate of the label's centre, value) pairs), each
    moved onto its nearest tick mark; refused when the labelled ticks are not evenly spaced in
    value, as an axis's are."""
    if len(labels) < 2 or len(ticks) < 2:
        raise ValueError(f"an axis needs two labelled ticks, found {len(labels)} labels on {len(ticks)} ticks")
    points = [(min(ticks, key=lambda t: abs(t - position)), math.log10(v) if log else v) for position, v in labels]
    n = len(points)
    mean_c, mean_v = sum(c for c, _ in points) / n, sum(v for _, v in points) / n
    spread = sum((c - mean_c) ** 2 for c, _ in points)
    if spread == 0:
        raise ValueError("the labels of an axis all sit on one tick")
    scale = sum((c - mean_c) * (v - mean_v) for c, v in points) / spread
    axis = Axis(mean_v - scale * mean_c, scale, log)
    spacing = min(abs(a - b) for (a, _), (b, _) in zip(points, points[1:]))
    worst = max(abs(c - axis.coordinate(10**v if log else v)) for c, v in points)
    if worst > 0.01 * spacing:
        raise ValueError(f"the tick labels are not evenly spaced: a tick lies {worst:.3g} off the axis line "
                         f"(spacing {spacing:.3g})")
    return axis


def value_at(curve: Sequence[tuple[float, float]], x: float, log: bool = False) -> Optional[float]:
    """The curve's y at ``x`` ((x, y) points), interpolated linearly in x, or in log x when ``log``
    (a straight segment of a log-x plot), between the two points around ``x``; ``None`` outside
    the curve's x-range."""
    scale = math.log10 if log else float
    points = sorted(curve)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (scale(x) - scale(x0)) / (scale(x1) - scale(x0))
    return None


def read_figure(page, log_x: bool, x_unit: float) -> list[dict]:
    """Every curve on ``page`` (a PyMuPDF page): its panel's title, its legend name, its vertices
    in (samples, value), and the panel's x- and y-range, outside which it is not read."""
    drawings = page.get_drawings()
    words = page.get_text("words")
    frames = [d["rect"] for d in drawings
              if d.get("fill") == (1.0, 1.0, 1.0) and d["items"][0][0] == "re" and d["rect"].width < 0.3 * page.rect.width]
    lines = [(item[1], item[2]) for d in drawings if d.get("color") == (0.0, 0.0, 0.0)
             for item in d["items"] if item[0] == "l"]
    minus_signs = [d["rect"] for d in drawings if d.get("fill") == (0.0, 0.0, 0.0) and d["rect"].height < 0.5]
    legend = _legend(drawings, words)
    panels = []
    for frame in frames:
        x_axis = calibrate(*_ticks_and_labels(frame, lines, words, minus_signs, vertical=False, log=log_x, unit=x_unit), log=log_x)
        y_axis = calibrate(*_ticks_and_labels(frame, lines, words, minus_signs, vertical=True, log=False, unit=1), log=False)
        title = " ".join(w[4] for w in sorted(words, key=lambda w: w[0])
                         if w[3] <= frame.y0 + 0.5 and w[1] > frame.y0 - 12 and frame.x0 <= (w[0] + w[2]) / 2 <= frame.x1)
        panels.append((frame, x_axis, y_axis, title))
    curves = []
    for drawing in drawings:
        key = _style(drawing)
        points = [p for item in drawing["items"] if item[0] == "l" for p in (item[1], item[2])]
        if key not in legend or len(points) < 12:  # legend samples are single segments
            continue
        # A curve may run past its panel's edges (the PDF clips it there): it belongs to the panel
        # that holds most of its vertices, and is read only inside that panel.
        inside = [sum(frame.contains(p) for p in points) for frame, *_ in panels]
        frame, x_axis, y_axis, title = panels[max(range(len(panels)), key=inside.__getitem__)]
        curves.append({"panel": title, "legend": legend[key],
                       "points": sorted({(x_axis.value(p.x), y_axis.value(p.y)) for p in points}),
                       "log_x": log_x, "x_range": (x_axis.value(frame.x0), x_axis.value(frame.x1)),
                       "y_range": (y_axis.value(frame.y1), y_axis.value(frame.y0))})
    return curves


def _style(drawing) -> Optional[tuple]:
    color = drawing.get("color")
    if color is None or color == (0.0, 0.0, 0.0):
        return None
    return color, drawing.get("dashes") not in (None, "[] 0")


def _legend(drawings, words) -> dict:
    """Legend line style -> the words on the line's right ("AEVB (train)"), up to the first wide gap."""
    legend = {}
    for drawing in drawings:
        key = _style(drawing)
        rect = drawing["rect"]
        if key is None or len(drawing["items"]) > 3 or rect.height > 1:
            continue
        row = sorted((w for w in words if w[0] > rect.x1 and abs((w[1] + w[3]) / 2 - rect.y0) < 3), key=lambda w: w[0])
        text, end = [], rect.x1
        for w in row:
            if w[0] - end > (20 if not text else 6):
                break
            text.append(w[4])
            end = w[2]
        if text:
            legend[key] = " ".join(text)
    return legend


def _ticks_and_labels(frame, lines, words, minus_signs, vertical: bool, log: bool, unit: float):
    """The major ticks' positions along one axis of ``frame`` (the left edge's when ``vertical``,
    else the bottom's) and the (position, value) of each numeric label beside it."""
    if vertical:
        marks = [(a.y, b.x - a.x) for a, b in lines if abs(a.x - frame.x0) < 0.3 and abs(a.y - b.y) < 0.01
                 and 0 < b.x - a.x < 5 and frame.y0 - 0.5 <= a.y <= frame.y1 + 0.5]
        near = [w for w in words if frame.x0 - 15 < w[2] <= frame.x0 and frame.y0 - 2 < (w[1] + w[3]) / 2 < frame.y1 + 2]
    else:
        marks = [(a.x, a.y - b.y) for a, b in lines if abs(a.y - frame.y1) < 0.3 and abs(a.x - b.x) < 0.01
                 and 0 < a.y - b.y < 5 and frame.x0 - 0.5 <= a.x <= frame.x1 + 0.5]
        near = [w for w in words if frame.y1 <= w[1] < frame.y1 + 6 and frame.x0 - 6 < (w[0] + w[2]) / 2 < frame.x1 + 6]
    longest = max((length for _, length in marks), default=0)
    ticks = sorted({position for position, length in marks if length > 0.75 * longest})  # major ticks only
    labels = []
    for w in near:
        text = w[4].replace("\u2212", "-")
        if not re.fullmatch(r"-?\d+", text):
            continue
        if log:
            value = 10.0 ** int(text[2:]) if text.startswith("10") and len(text) > 2 else None
        else:
            negative = text.startswith("-") or any(abs((m.y0 + m.y1) / 2 - (w[1] + w[3]) / 2) < 1.5 and 0 <= w[0] - m.x1 < 1.5
                                                   for m in minus_signs)
            value = -abs(float(text)) if negative else float(text)
        if value is not None:
            labels.append(((w[1] + w[3]) / 2 if vertical else (w[0] + w[2]) / 2, value * unit))
    return ticks, labels


def _panel(figure: int, title: str) -> dict:
    """The panel's identity in this project's terms, from its title ("MNIST, Nz =3")."""
    if figure == 2:
        match = re.fullmatch(r"(MNIST|Frey Face), Nz =(\d+)", title)
        if not match:
            raise ValueError(f"unexpected Figure 2 panel title {title!r}")
        return {"dataset": DATASETS[match[1]], "latent_dim": int(match[2])}
    match = re.fullmatch(r"Ntrain = (\d+)", title)
    if not match:
        raise ValueError(f"unexpected Figure 3 panel title {title!r}")
    return {"train_size": int(match[1])}


def _series(legend: str) -> dict:
    match = re.fullmatch(r"(.+) \((train|test)\)", legend)
    if not match or match[1] not in METHODS:
        raise ValueError(f"unexpected legend entry {legend!r}")
    return {"method": METHODS[match[1]], "split": match[2]}


def paper_figures(pdf: str) -> dict:
    try:
        import pymupdf
    except ImportError:
        raise SystemExit("error: reading the paper's figures needs PyMuPDF; install it with: pip install pymupdf")
    document = pymupdf.open(pdf)
    if "1312.6114v10" not in document[0].get_text():
        raise SystemExit(f"error: {pdf} is not arXiv:1312.6114v10 (its first page does not say so); "
                         "give that version's PDF")
    result = {"source": f"{SOURCE}, Figures 2 (page 7) and 3 (page 8), read from the PDF's vector paths "
                        "by benchmarks/paper_figures.py; approximate to a line's width",
              "value": "the curve's value (nats per datapoint) at each sample count inside its panel"}
    for figure, (page, log_x, unit) in FIGURES.items():
        grid = GRID_LOG if log_x else GRID_LINEAR
        series = []
        for curve in read_figure(document[page], log_x, unit):
            series.append({**_panel(figure, curve["panel"]), **_series(curve["legend"]),
                           "curve": [[n, round(v, 1)] for n in grid if (v := _read(curve, n)) is not None]})
        result[f"figure{figure}"] = series
    return result


def _read(curve: dict, samples: float) -> Optional[float]:
    """The curve at ``samples``; ``None`` where that is outside its panel."""
    (x_low, x_high), (y_low, y_high) = curve["x_range"], curve["y_range"]
    inside = x_low * (1 - 1e-6) <= samples <= x_high * (1 + 1e-6)  # the panel's edges are in, to rounding
    value = value_at(curve["points"], samples, curve["log_x"]) if inside else None
    return value if value is not None and y_low <= value <= y_high else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pdf", required=True, help="the PDF of arXiv:1312.6114v10")
    parser.add_argument("--out", default=str(OUTPUT), help=f"where to write the values (default {OUTPUT})")
    args = parser.parse_args(argv)
    if not Path(args.pdf).is_file():
        print(f"error: no PDF at {args.pdf}; give the path of arXiv:1312.6114v10's PDF with --pdf", file=sys.stderr)
        return 2
    figures = paper_figures(args.pdf)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    for figure in ("figure2", "figure3"):
        for s in figures[figure]:
            panel = ", ".join(f"{k} {s[k]}" for k in ("dataset", "latent_dim", "train_size") if k in s)
            read = dict(s["curve"])
            print(f"{figure}: {panel}, {s['method']} {s['split']}: "
                  + ", ".join(f"{n:.0e} {read.get(n)}" for n in (10**6, 10**7, 10**8)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

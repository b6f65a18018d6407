"""The report page's figures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

Rules:
- Each figure is a matplotlib Figure on its own FigureCanvasAgg (no pyplot, no
  global state), saved as PNG at 100 dpi with a tight bounding box and no
  metadata, so the same results give the same bytes.
- Text from result files is drawn literally: a "$" never starts mathtext.
- Drift: time after programming on a symmetric-log axis, linear below the first
  positive time so that t = 0 is shown (from -1/4 of that time to 1.6 x the
  last), ticks at the measured times labelled in s/min/h/d/y; the mean over
  chips as a line, mean +- sample std (ddof=1; none over one chip) as a band, each
  chip's value as a dot, the FP view as a dashed line.
- Sensitivity: the delta of every layer (only that layer analog) as bars in
  ranking order, the layers the suggestion (if a budget was given) keeps
  digital in another colour; the
  cumulative curve (layers made analog one by one) with the FP view, the budget
  line (FP * (1 + budget) for perplexity, the budget itself for relative error)
  and the all-analog value.
- Test-time compute: accuracy against samples per problem (log-2 axis), one
  line per curve.
- Compile log: seconds per pass as horizontal bars in pass order.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from afmc.eval.result_models import DriftResult, SensitivityResult, TtcResult
from afmc.report.results import PassTime

WIDTH = 9.0  # inches at 100 dpi: 900 px, the page's figure width
FP_COLOUR, ANALOG_COLOUR, DIGITAL_COLOUR = "#444444", "#1f77b4", "#d62728"
METRIC_LABEL = {"perplexity": "perplexity", "relative_error": "relative output error"}
TIME_UNITS = (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0))


def literal(text: str) -> str:
    """`text` as matplotlib draws it verbatim (dollar signs escaped)."""
    return text.replace("$", r"\$")


def time_label(seconds: float) -> str:
    """A time in the largest unit it reaches: 0, 30 s, 1 h, 1 d, 1 y (3 significant digits)."""
    if seconds == 0:
        return "0"
    for unit, size in TIME_UNITS:
        if abs(seconds) >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()


def _new(height: float) -> Figure:
    return Figure(figsize=(WIDTH, height), dpi=100, layout="constrained")


def _time_axis(axes: Axes, times: Sequence[float]) -> None:
    positive = [time for time in times if time > 0]
    label = "time after programming"
    if positive:
        axes.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
        axes.set_xlim(-0.25 * min(positive), max(positive) * 1.6)
        label += " (symmetric log scale, linear below the first positive time)"
    axes.set_xticks(list(times), [time_label(time) for time in times])
    axes.set_xticks([], minor=True)
    axes.set_xlabel(label)


def drift_figure(drift: DriftResult) -> bytes:
    """Mean +- sample std over chips against time after programming (module rules)."""
    figure = _new(4.2)
    axes = figure.add_subplot()
    times = [point.time_s for point in drift.summary]
    means = [point.mean for point in drift.summary]
    stds = [0.0 if point.std is None else point.std for point in drift.summary]
    chips = max((point.chips for point in drift.summary), default=0)
    if chips > 1:
        axes.fill_between(times, [m - s for m, s in zip(means, stds, strict=True)],
                          [m + s for m, s in zip(means, stds, strict=True)],
                          color=ANALOG_COLOUR, alpha=0.2,
                          label=f"mean +- sample std over {chips} chips")
    axes.scatter([chip.time_s for chip in drift.chips], [chip.value for chip in drift.chips],
                 s=12, color=ANALOG_COLOUR, alpha=0.45, label="one chip")
    axes.plot(times, means, "o-", color=ANALOG_COLOUR, label="mean over chips")
    if drift.fp is not None:
        axes.axhline(drift.fp, color=FP_COLOUR, linestyle="--", label=f"FP view {drift.fp:.4g}")
    _time_axis(axes, sorted(set(times) | set(drift.times_s)))
    axes.set_ylabel(METRIC_LABEL[drift.metric])
    axes.set_title(f"{METRIC_LABEL[drift.metric]} against drift time ({chips} chips, "
                   f"read noise {drift.read_noise:g})")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=9)
    return _png(figure)


def sensitivity_bars(result: SensitivityResult) -> bytes:
    """The delta of every layer analog alone, most harmful at the bottom (module rules)."""
    layers = result.layers
    figure = _new(max(2.5, 0.9 + 0.24 * len(layers)))
    axes = figure.add_subplot()
    keep = set(result.keep_digital)
    positions = list(range(len(layers)))
    axes.barh(positions, [layer.delta for layer in layers],
              color=[DIGITAL_COLOUR if layer.name in keep else ANALOG_COLOUR for layer in layers])
    axes.set_yticks(positions, [literal(layer.name) for layer in layers], fontsize=8)
    axes.invert_yaxis()
    axes.axvline(0, color=FP_COLOUR, linewidth=0.8)
    delta = ("perplexity - FP perplexity" if result.metric == "perplexity"
             else "relative output error")
    axes.set_xlabel(f"{delta}, only this layer analog (chip {result.seed})")
    if result.budget is not None:
        legend = [Patch(color=ANALOG_COLOUR, label="analog in the suggestion")]
        if keep:
            legend.append(Patch(color=DIGITAL_COLOUR, label="kept digital in the suggestion"))
        axes.legend(handles=legend, loc="upper right", fontsize=9)
    axes.set_title("per-layer sensitivity (ranked, least harmful first)")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def budget_line(result: SensitivityResult) -> float | None:
    """The metric the budget allows: FP * (1 + budget) for perplexity, else the budget."""
    if result.budget is None:
        return None
    if result.metric == "perplexity":
        return None if result.fp is None else result.fp * (1 + result.budget)
    return result.budget


def sensitivity_curve(result: SensitivityResult) -> bytes:
    """The metric as layers are made analog one by one (module rules)."""
    figure = _new(3.6)
    axes = figure.add_subplot()
    points = result.cumulative
    axes.plot([p.analog_layers for p in points], [p.value for p in points], "o-",
              color=ANALOG_COLOUR, markersize=4, label="layers made analog in ranking order")
    if result.fp is not None:
        axes.axhline(result.fp, color=FP_COLOUR, linestyle="--", label=f"FP view {result.fp:.4g}")
    allowed = budget_line(result)
    if allowed is not None:
        axes.axhline(allowed, color=DIGITAL_COLOUR, linestyle=":",
                     label=f"budget {result.budget:.2%} ({allowed:.4g})")
    axes.axhline(result.all_analog, color=ANALOG_COLOUR, linestyle=":", linewidth=0.8,
                 label=f"all analog {result.all_analog:.4g}")
    axes.set_xlabel("analog layers")
    axes.set_ylabel(METRIC_LABEL[result.metric])
    axes.set_title("cumulative curve")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=9)
    return _png(figure)


def ttc_figure(result: TtcResult) -> bytes:
    """Accuracy against samples per problem, one line per curve (module rules)."""
    figure = _new(3.8)
    axes = figure.add_subplot()
    for curve in result.curves:
        axes.plot(result.samples, curve.accuracy, "o-", label=literal(curve.label))
    if result.samples and min(result.samples) > 0:
        axes.set_xscale("log", base=2)
    axes.set_xticks(result.samples, [str(n) for n in result.samples])
    axes.set_xticks([], minor=True)
    axes.set_xlabel(f"samples per problem ({literal(result.vote)} vote, temperature "
                    f"{result.temperature:g})")
    axes.set_ylabel("accuracy")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"test-time compute: {literal(result.task)} ({result.problems} problems)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=9)
    return _png(figure)


def passes_figure(passes: Sequence[PassTime]) -> bytes:
    """Seconds per compile pass, in pass order (module rules)."""
    figure = _new(max(2.0, 0.8 + 0.26 * len(passes)))
    axes = figure.add_subplot()
    positions = list(range(len(passes)))
    seconds = [step.seconds for step in passes]
    axes.barh(positions, seconds, color=ANALOG_COLOUR)
    axes.set_yticks(positions, [literal(step.name) for step in passes], fontsize=9)
    axes.invert_yaxis()
    for position, value in zip(positions, seconds, strict=True):
        axes.annotate(f" {value:.3f} s", (value, position), va="center", fontsize=8)
    top = max(seconds, default=0.0)
    axes.set_xlim(0, top * 1.15 if top > 0 and math.isfinite(top) else 1)
    axes.set_xlabel("seconds")
    axes.set_title(f"compile time per pass (total {sum(seconds):.1f} s)")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)

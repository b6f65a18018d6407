"""The tables `afmc cost` prints: one row per layer with a total, then the per-token summary
and the ratio against the digital baseline."""

from __future__ import annotations

from rich.markup import escape

from afmc.console.tables import Column, FittedTable, layer_names
from afmc.cost.model import CostReport

COLUMNS = (Column("layer", "name", "left"), Column("placement", justify="left"),
           *(Column(header) for header in (
               "shape [out x in]", "slices", "tiles", "analog MACs", "DAC", "ADC",
               "digital MACs", "memory bytes", "energy nJ", "time ns")))


def _count(value: float) -> str:
    return f"{value:,.0f}" if value else "-"


def layer_table(report: CostReport) -> FittedTable:
    """One row per layer (counts, energy and time per token) and a total row; at a narrow
    width the columns spread over several tables, each with the layer names."""
    names = layer_names([layer.name for layer in report.layers])
    rows: list[list[str] | None] = [
        [names.show(layer.name), layer.placement, f"{layer.out_features} x {layer.in_features}",
         _count(layer.slices), _count(layer.tiles), _count(layer.analog_macs),
         _count(layer.dac_conversions), _count(layer.adc_conversions),
         _count(layer.digital_macs), _count(layer.memory_bytes),
         f"{layer.total_energy_pj / 1e3:,.2f}", f"{layer.time_ns:,.1f}"]
        for layer in report.layers]
    rows += [None, ["total", "", "", "", _count(report.tiles),
                    _count(report.total("analog_macs")), _count(report.total("dac_conversions")),
                    _count(report.total("adc_conversions")),
                    _count(report.total("digital_macs")), _count(report.total("memory_bytes")),
                    f"{report.energy_pj / 1e3:,.2f}", f"{report.latency_ns:,.1f}"]]
    return FittedTable(COLUMNS, rows, escape(f"cost per token on {report.profile} "
                                             f"({report.kind})"),
                       ["time: the layer alone; the total row's time is the latency of the "
                        "profile's pipelining", *names.notes])


def summary_lines(report: CostReport, baseline: CostReport | None = None) -> list[str]:
    """The per-token totals, the energy by term, the area and the baseline ratio."""
    terms = ", ".join(f"{term} {value / 1e6:,.3f}" for term, value
                      in report.energy_by_term.items() if value)
    lines = [f"{report.profile}: {report.energy_pj / 1e6:,.3f} uJ and "
             f"{report.latency_ns / 1e3:,.3f} us per token (energy in uJ: {terms or '-'})"]
    if report.area_mm2 is not None:
        lines.append(f"{report.tiles:,} tiles on {report.chips:,} chip"
                     f"{'s' if report.chips != 1 else ''}, {report.area_mm2:,.2f} mm^2 of tiles")
    if report.resliced:
        lines.append(f"{len(report.resliced)} layers re-cut into slices of at most the "
                     "profile's tile rows (the compiled slices are taller)")
    if baseline is not None and baseline.profile != report.profile:
        from afmc.cost.summary import compare

        ratio = compare(report, baseline)
        energy, latency = ratio["energy_ratio"], ratio["latency_ratio"]
        lines.append(f"against {baseline.profile} ({baseline.energy_pj / 1e6:,.3f} uJ, "
                     f"{baseline.latency_ns / 1e3:,.3f} us per token): "
                     f"{'-' if energy is None else f'{energy:,.1f}x'} less energy, "
                     f"{'-' if latency is None else f'{latency:,.1f}x'} less latency")
    return lines

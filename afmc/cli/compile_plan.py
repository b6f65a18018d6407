"""`afmc compile --dry-run`: the plan of a compile, without lowering or writing anything.

The plan opens the model as a compile does (capture, or the ONNX load), resolves the
pass list (the target's, --passes, --skip) and runs the passes that come before the
placement and need no calibration data, the placement pass included (for aimc:
fold-batchnorm, fold-norms, place-layers). It then cuts every analog layer into the
input slices the analog op would take (hardware.max_in) and maps them on the tiles with
every strategy (afmc.mapping), times hardware.devices_per_weight.

Skipped: the calibration data, the passes after the placement (smoothing, the analog
op, the outlier split, calibration), lowering, the target's post-lowering step, the
fidelity check and the output. The placement is the placement pass's; the tile counts
are those the compile records (a pass list without a placement pass places nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console
from rich.markup import escape

from afmc.config import AfmcConfig
from afmc.console.tables import Column, FittedTable, layer_names
from afmc.passes.layers import LayerRecord
from afmc.passes.registry import PassSpec, get_pass, pass_name

PLACEMENT_PASSES = ("place-layers", "onnx-place-layers", "onnx-place-integer-layers")


@dataclass
class CompilePlan:
    """What a compile would do: its passes (those run for the plan first), the layers
    with their placement, and the tiles of every strategy."""

    model: str
    target: str
    passes: list[str]
    ran: list[str]
    layers: list[LayerRecord]
    strategy: str
    tiles: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "passes": self.passes,
                "ran_for_the_plan": self.ran, "strategy": self.strategy,
                "tiles_by_strategy": self.tiles,
                "layers": [{"name": layer.name, "out_features": layer.out_features,
                            "in_features": layer.in_features, "placement": layer.placement,
                            "rule": layer.rule, "slice_sizes": layer.slice_sizes,
                            "tiles": layer.tiles} for layer in self.layers]}


def _placement_prefix(steps: list[PassSpec]) -> list[str]:
    """The passes up to the last placement pass, when none of them needs calibration."""
    names = [step if isinstance(step, str) else "" for step in steps]
    last = max((index for index, name in enumerate(names) if name in PLACEMENT_PASSES),
               default=-1)
    prefix = names[:last + 1]
    if any(not name or get_pass(name).uses_calibration for name in prefix):
        raise ValueError("--dry-run: a pass before the placement needs calibration data or "
                         "is not a registered pass; compile without --dry-run")
    return prefix


def plan_compile(model: str, target: str, config: AfmcConfig, *,
                 passes: list[PassSpec] | None = None, skip: list[str] | tuple[str, ...] = (),
                 tokenizer: str | None = None, recalibrate: bool = False) -> CompilePlan:
    """The plan of `afmc.compile(model, target, config, ...)` (module rules)."""
    from afmc.compiler.driver import pass_steps, resolve_tokenizer
    from afmc.compiler.frontends import open_frontend
    from afmc.mapping import map_all_strategies
    from afmc.ops.analog_linear import slice_sizes
    from afmc.targets import get_target

    chosen = get_target(target)
    frontend = open_frontend(model, tokenizer=resolve_tokenizer(tokenizer),
                             recalibrate=recalibrate)
    steps = pass_steps(frontend, chosen, passes, skip)
    ran = _placement_prefix(steps)
    frontend.hold_reference(None)
    for name in ran:
        frontend.run_pass(name, config, None)
    hardware = config.hardware
    layers = [replace(layer, slice_sizes=slice_sizes(layer.in_features, hardware.max_in)
                      if layer.placement == "analog" and chosen.runtime == "analog" else [])
              for layer in frontend.layers()]
    maps = {name: tile_map.replicated(hardware.copies) for name, tile_map
            in map_all_strategies([layer for layer in layers if layer.slice_sizes],
                                  hardware.tile_rows, hardware.tile_cols).items()}
    per_layer = maps[hardware.tile_strategy].layer_tiles()
    for layer in layers:
        layer.tiles = per_layer.get(layer.name, 0)
    return CompilePlan(frontend.name, chosen.name,
                       [pass_name(step) for step in steps], ran, layers, hardware.tile_strategy,
                       {name: tile_map.tiles for name, tile_map in maps.items()})


def print_plan(plan: CompilePlan, console: Console) -> None:
    """The plan as text: the passes, a table of the layers, the tiles of every strategy."""
    console.print(f"afmc compile {plan.model} --target {plan.target} (dry run: nothing "
                  "lowered or written)", highlight=False)
    console.print(f"passes: {', '.join(plan.passes) or 'none'}", highlight=False)
    console.print(f"run for the plan: {', '.join(plan.ran) or 'none'}", highlight=False)
    names = layer_names([layer.name for layer in plan.layers])
    columns = [Column("layer", "name", "left"), Column("placement", justify="left"),
               Column("shape [out x in]"), Column("slices"), Column("tiles"),
               Column("rule", "text", "left")]
    rows = [[names.show(layer.name), layer.placement,
             f"{layer.out_features} x {layer.in_features}",
             str(len(layer.slice_sizes)) if layer.slice_sizes else "-",
             str(layer.tiles) if layer.slice_sizes else "-", escape(layer.rule)]
            for layer in plan.layers]
    analog = sum(layer.placement == "analog" for layer in plan.layers)
    console.print(FittedTable(columns, rows, f"{len(plan.layers)} layers, {analog} on the "
                              f"accelerator (tiles: {plan.strategy})", names.notes))
    if plan.tiles and any(plan.tiles.values()):
        console.print("tiles by strategy: " + ", ".join(
            f"{name} {tiles}" for name, tiles in plan.tiles.items()), highlight=False)

"""afmc eval: check the options, open the model and hand it to the one mode asked for
(afmc.eval.modes); every error a user can cause is raised before the work starts."""

from __future__ import annotations

from afmc.console.screen import Screen
from afmc.eval.drift import eval_noise, parse_times
from afmc.eval.json_out import check_json_path
from afmc.eval.modes import drift, inputs, seeds, sensitivity, task
from afmc.eval.options import (
    check_options,
    noise_model,
    sensitivity_budget,
    tensor_source,
    within_cores,
)
from afmc.eval.request import EvalPlan, EvalRequest
from afmc.runtime.compiled import CompiledModel


def run_eval(request: EvalRequest, screen: Screen) -> None:
    """Run the mode of `request`: --task, --sensitivity, --drift, --inputs or --text."""
    modes = [flag for flag, given in (("--task", request.task is not None),
                                      ("--drift", bool(request.drift)),
                                      ("--sensitivity", request.sensitivity)) if given]
    if len(modes) > 1:
        raise ValueError(f"{' and '.join(modes)} are separate evaluations: give one")
    if request.task is not None:
        if {request.profile, request.weight_slices, request.devices_per_weight} != {None}:
            raise ValueError("--task runs the compiled chips: --profile, --weight-slices and "
                             "--devices-per-weight go with --text, --inputs, --drift or "
                             "--sensitivity")
        task.run(request, screen)
        return
    plan = checked_plan(request, screen)
    if request.sensitivity:
        sensitivity.run(plan, screen)
    elif plan.times is not None:
        drift.run(plan, screen)
    elif tensor_source(plan.model, request.text, request.inputs) is not None:
        inputs.run(plan, screen)
    else:
        seeds.run(plan, screen)
    if plan.cost_lines:
        screen.out.print(f"cost of these chips ({plan.noise_label()}), per token:")
        for line in plan.cost_lines:
            screen.out.print(f"  {line}", highlight=False)


def checked_plan(request: EvalRequest, screen: Screen) -> EvalPlan:
    """The options checked in order, the model opened and its evaluation noise chosen."""
    check_options(seeds=request.seeds, max_tokens=request.max_tokens, seq_len=request.seq_len,
                  read_noise=request.read_noise, jobs=request.jobs)
    jobs = within_cores(request.jobs, screen.out)
    times = parse_times(request.drift) if request.drift is not None else None
    if request.json_out is not None:
        check_json_path(request.json_out)
    budget = sensitivity_budget(request.sensitivity, request.seed, request.budget,
                                request.rules)
    model = CompiledModel(request.compiled, weight_slices=request.weight_slices,
                          devices_per_weight=request.devices_per_weight)
    noise = eval_noise(model, noise_model(request.noise), request.gdc, times is not None)
    cost, lines = chip_cost(model, request.profile)
    return EvalPlan(request, model, noise, jobs, times, budget, cost, lines)


def chip_cost(model: CompiledModel, profile: str | None) -> tuple[dict | None, tuple[str, ...]]:
    """--profile: the cost of `model`'s chips on it (afmc.cost, with the model's bit slices
    and devices per weight) and against the default digital baseline, as the result's
    "cost" and the lines afmc cost prints; (None, ()) without a profile."""
    if profile is None:
        return None, ()
    from afmc.cost.command import DEFAULT_BASELINE
    from afmc.cost.model import estimate_record
    from afmc.cost.profile import load_profile
    from afmc.cost.summary import compare
    from afmc.cost.table import summary_lines

    report = estimate_record(model.record, load_profile(profile))
    baseline = estimate_record(model.record, load_profile(DEFAULT_BASELINE))
    cost = {**report.totals(), "comparison": compare(report, baseline)}
    return cost, tuple(summary_lines(report, baseline))

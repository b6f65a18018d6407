"""afmc eval: check the options, open the model and hand it to the one mode asked for
(afmc.eval.modes); every error a user can cause is raised before the work starts."""

from __future__ import annotations

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
from afmc.screen import Screen


def run_eval(request: EvalRequest, screen: Screen) -> None:
    """Run the mode of `request`: --task, --sensitivity, --drift, --inputs or --text."""
    modes = [flag for flag, given in (("--task", request.task is not None),
                                      ("--drift", bool(request.drift)),
                                      ("--sensitivity", request.sensitivity)) if given]
    if len(modes) > 1:
        raise ValueError(f"{' and '.join(modes)} are separate evaluations: give one")
    if request.task is not None:
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
    model = CompiledModel(request.compiled)
    noise = eval_noise(model, noise_model(request.noise), request.gdc, times is not None)
    return EvalPlan(request, model, noise, jobs, times, budget)

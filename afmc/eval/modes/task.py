"""afmc eval --task: the accuracy of a majority vote over n = 1, 2, 4, ... samples for
the FP view and every chip (afmc.eval.test_time_compute), as a table and a result
file."""

from __future__ import annotations

from afmc.console.screen import Screen
from afmc.eval.json_out import check_json_path
from afmc.eval.options import check_options
from afmc.eval.request import EvalRequest
from afmc.eval.test_time_compute import accuracy_table, eval_task
from afmc.runtime.compiled import CompiledModel


def run(request: EvalRequest, screen: Screen) -> None:
    """Vote over samples of --task (module docstring); print, and write the result."""
    if request.text is not None or request.inputs is not None:
        raise ValueError("give either --task or --text/--inputs, not both")
    check_options(seeds=request.seeds, read_noise=request.read_noise)
    if request.json_out is not None:
        check_json_path(request.json_out)
    with screen.bar_from_first_report("problems") as progress:
        result, path = eval_task(CompiledModel(request.compiled), request.task,
                                 samples=request.samples, vote=request.vote,
                                 seeds=request.seeds, temperature=request.temperature,
                                 read_noise=request.read_noise, progress=progress,
                                 copy=request.json_out)
    screen.out.print(accuracy_table(result))
    screen.out.print(f"-> {path}", soft_wrap=True)

"""afmc eval --sensitivity: every analog layer alone on chip --seed, ranked, the
cumulative curve, a result file and, with --budget, the keep-digital configuration
(the chips kept in OUT/eval/sensitivity.jsonl as they finish, afmc.eval.sensitivity)."""

from __future__ import annotations

from afmc.console.screen import Screen
from afmc.data.model_inputs import load_inputs
from afmc.eval import sensitivity as sens
from afmc.eval.modes.windows import lm_windows
from afmc.eval.options import tensor_source
from afmc.eval.perplexity import PerplexityScorer
from afmc.eval.request import EvalPlan
from afmc.eval.results import write_result
from afmc.eval.scoring import Scorer
from afmc.eval.tensor_eval import OutputErrorScorer
from afmc.io.layout import EVAL_DIR


def run(plan: EvalPlan, screen: Screen) -> None:
    """Rank the layers of chip --seed (module docstring); print, and write the results."""
    request, model, budget = plan.request, plan.model, plan.budget
    sens.check_sensitivity(model)
    scorer: Scorer
    if tensor_source(model, request.text, request.inputs) is not None:
        scorer = OutputErrorScorer.against_fp(model, load_inputs(request.inputs,
                                                                 model.signature()))
    else:
        windows = lm_windows(plan, "--sensitivity", screen)
        scorer = PerplexityScorer.against_fp(model, windows, logits=True)
        screen.out.print(f"FP perplexity {scorer.fp:.4f} ({windows.size} tokens)")
    folder = model.out_dir / EVAL_DIR
    folder.mkdir(exist_ok=True)
    with screen.bar_from_first_report("layer chips") as progress:
        report = sens.measure_sensitivity(model, scorer, request.seed, noise=plan.noise,
                                          read_noise=request.read_noise, jobs=plan.jobs,
                                          log=folder / sens.SENSITIVITY_LOG,
                                          progress=progress)
    if budget is not None:
        sens.suggest(report, budget)
    screen.out.print(sens.ranking_table(report))
    lm = report.fp is not None
    screen.out.print(f"all analog: {report.metric.replace('_', ' ')} {report.all_analog:.4f}"
                     + (f" (FP {report.fp:.4f}, {report.all_analog / report.fp - 1:+.2%})"
                        if lm else ""))
    if budget is not None:
        path = request.rules or folder / sens.RULES_FILE
        path.parent.mkdir(exist_ok=True)
        sens.write_rules(path, model.record, report.keep_digital)
        screen.out.print(f"budget {budget:.2%}: {len(report.layers) - len(report.keep_digital)} "
                         f"layer(s) analog, {len(report.keep_digital)} kept digital -> {path}")
    settings = plan.settings(seed=request.seed, budget=budget, max_tokens=request.max_tokens,
                             seq_len=request.seq_len)
    path = write_result(model.out_dir, "sensitivity", [plan.noise_label(), f"seed{request.seed}"],
                        settings, plan.with_cost(report.to_json()),
                        copy=request.json_out)
    screen.out.print(f"-> {path}", soft_wrap=True)

"""The modes of `afmc eval`, one module each, picked by afmc.eval.command: seeds (a
text's perplexity per chip, or an encoder's embedding error), inputs (tensor inputs
against the FP view), drift, sensitivity and task (test-time compute). Each prints
its table and writes its result file to OUT/eval (afmc.eval.results)."""

"""The files of a compiled model's output directory (no imports: anyone may use it)."""

MODEL_FILE = "model.onnx"  # the lowered model, afmc functions and metadata
RECORD_FILE = "afmc.json"  # configuration, layers, tiles, time per step
TOKENIZER_DIR = "tokenizer"  # a Hugging Face tokenizer, when the model has one
EVAL_DIR = "eval"  # results of afmc eval (drift, sensitivity, test-time compute), per kind

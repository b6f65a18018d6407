"""One test file per compiler pass: tests/passes/test_NAME.py tests the FX pass NAME and
the ONNX pass onnx-NAME (the level or levels it exists at), with its graph before and
after and, where the pass keeps the FP function, the FP outputs before and after.

A package, so that its modules and its conftest.py are named passes.* and cannot clash
with tests/conftest.py or a module of tests/ (pytest's default rootdir-based imports).
"""

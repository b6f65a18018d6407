"""The compiler: a model through its front end, the passes, lowering and the target's
step to a compiled ONNX model and its record (afmc.compiler.driver); afmc.api is its
public face.
"""

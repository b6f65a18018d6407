"""afmc: the Analog Foundation Model Compiler."""

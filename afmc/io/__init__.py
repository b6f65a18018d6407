"""Files and user errors shared by every command: the output directory (staged, published
atomically), input files, the OUT layout, user errors and how they print, interrupts.
"""

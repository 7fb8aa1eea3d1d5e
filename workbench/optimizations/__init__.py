"""One home per optimization switch.

Each module here owns one switch of `Optimizations`: what it attacks (its docstring names the
notebook chapter and the measurement), and how it is installed into a built model or runner.
"""

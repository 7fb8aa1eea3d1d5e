"""Notebook-side tools: the switchboard dashboard and the helpers the notebooks share.

Needs the notebook extras: pip install -e '.[notebook]' (ipywidgets, matplotlib).
"""
from .dashboard import Switchboard

__all__ = ["Switchboard"]

"""Moved to ``sparse_vdit.cli.evaluation`` (the top floor, with the commands that run it; the
side-by-side video helpers to ``pipelines.videos``); this old path and its submodules stay
importable as aliases (``sparse_vdit._moved``)."""

from sparse_vdit._moved import alias

alias(__name__)

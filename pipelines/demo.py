"""Moved to ``sparse_vdit.cli.demo``; this old path stays importable as an alias (``sparse_vdit._moved``)."""

from sparse_vdit._moved import alias

alias(__name__)

"""The plan search's defaults, written once (no torch: the commands' parsers read them)."""

DEFAULT_LAMBDA = 0.5  # weight of the cost in the loss (the paper's)
DEFAULT_EPSILON = 0.05  # a head takes a candidate only if its loss is below this (normalised units)
COST_SOURCES = ("auto", "measured", "flops")  # measured kernel time on a GPU, FLOP density, or auto

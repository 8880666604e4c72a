"""AdaSpa: online, blockified top-k sparse attention (arXiv 2502.21079). Filled in by later work."""

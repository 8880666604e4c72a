"""Offline, hardware-aware plan search for Sparse-vDiT (cost model, plan files). Filled in by later work."""

"""diffusers integration: attention processors, one-call apply, evaluation."""

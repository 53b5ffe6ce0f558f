"""The enforced layer horizon: the patched forward pass, its clean runs and metrics."""

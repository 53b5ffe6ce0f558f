"""Hooks on the residual stream: the sublayer decomposition and the capture of its sites."""

"""Inference: the model registry and loaders, series selection, volume assembly, the stage."""

"""Model plug-ins: a model is a folder with a manifest, weights and (optionally) its own code."""

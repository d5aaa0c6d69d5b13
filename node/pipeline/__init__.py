"""The flow (flow.py) and one package per stage: complete, deid, infer, build, deliver."""

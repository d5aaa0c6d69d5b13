"""dicom-node: a DICOM network node that brings AI into the imaging workflow."""

__version__ = "0.1.0"

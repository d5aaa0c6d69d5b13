"""Burned-in text: Clean Pixel Data by region rules, or quarantine when it cannot be ruled out.

Rules work as RSNA CTP's DicomPixelAnonymizer does: a rule matches an instance by modality,
manufacturer, model (regular expressions) and image size, and lists rectangles to blank. An
instance that declares burned-in annotation (Burned In Annotation = YES) or is of a kind that
usually carries it (US, SC, OT, any Secondary Capture) and has no matching rule is refused with
:class:`BurnedInText`, which the orchestrator turns into a quarantine, unless
``deid.allow_burned_in`` is set.

The one exception is a picture uploaded through the node's own upload path whose uploader
stated that it shows no identifying text: the stage knows that from the ledger (the statement
recorded against the SOP Instance UID the node gave it, the instance taken in by the upload
path), never from the object's header, and :func:`attested_picture` checks that the object is
still what the node built (a single-frame Secondary Capture with Burned In Annotation NO). A
peer's Secondary Capture that says NO follows the rule above like any other.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from pydicom.dataset import Dataset

from node.core.errors import PermanentError
from node.core.settings import DeidSettings, PixelRule

_RISKY_MODALITIES = {"US", "SC", "OT"}
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


class BurnedInText(PermanentError):
    """The instance may show identifying text in its pixels and no rule cleans it."""


def burned_in_risk(ds: Dataset) -> str | None:
    """Why this instance may carry burned-in text, or None."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "Burned In Annotation is YES"
    modality = str(ds.get("Modality", "")).upper()
    if modality in _RISKY_MODALITIES:
        return f"modality {modality} usually carries burned-in text"
    if str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_PREFIX):
        return "secondary capture images usually carry burned-in text"
    return None


def attested_picture(ds: Dataset) -> bool:
    """Whether ``ds`` is what the upload path builds for a picture stated to show no
    identifying text: one Secondary Capture Image frame with Burned In Annotation NO. Only for
    an instance the ledger records as such (see the module docstring)."""
    return (str(ds.get("SOPClassUID", "")) == _SECONDARY_CAPTURE_PREFIX
            and str(ds.get("BurnedInAnnotation", "")).upper() == "NO"
            and int(ds.get("NumberOfFrames", 1) or 1) == 1)


def for_attested_picture(settings: DeidSettings) -> DeidSettings:
    """The settings an :func:`attested_picture` is de-identified with: the uploader's
    statement stands in for a pixel rule (a matching rule still blanks its regions)."""
    return dataclasses.replace(settings, allow_burned_in=True)


def matching_rule(ds: Dataset, rules: tuple[PixelRule, ...]) -> PixelRule | None:
    for rule in rules:
        if rule.modality and rule.modality.upper() != str(ds.get("Modality", "")).upper():
            continue
        if rule.manufacturer and not re.search(rule.manufacturer, str(ds.get("Manufacturer", ""))):
            continue
        if rule.model and not re.search(rule.model, str(ds.get("ManufacturerModelName", ""))):
            continue
        if rule.rows and rule.rows != int(ds.get("Rows", 0)):
            continue
        if rule.columns and rule.columns != int(ds.get("Columns", 0)):
            continue
        return rule
    return None


def clean_pixels(ds: Dataset, settings: DeidSettings) -> bool:
    """Blank the matching rule's regions; return True if pixels were cleaned."""
    if "PixelData" not in ds:
        return False
    rule = matching_rule(ds, settings.pixel_rules) if settings.clean_pixel_data else None
    if rule is None:
        risk = burned_in_risk(ds)
        if risk and not settings.allow_burned_in:
            raise BurnedInText(f"{risk} and no pixel rule matches (deid.pixel_rules)")
        return False
    _blank(ds, rule)
    return True


def _blank(ds: Dataset, rule: PixelRule) -> None:
    arr = ds.pixel_array.copy()
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    for x0, y0, x1, y1 in rule.regions:
        frames[:, y0:y1, x0:x1, ...] = frames.min() if frames.size else 0
    photometric = str(ds.PhotometricInterpretation)
    if photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom decodes YBR JPEG data to RGB
    ds.set_pixel_data(arr, photometric, int(ds.BitsStored))
    ds.BurnedInAnnotation = "NO"

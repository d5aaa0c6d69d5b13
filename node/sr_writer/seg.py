"""DICOM Segmentation (SEG) of a model's result, over highdicom.

One BINARY segment per segment of the result, on the ORIGINAL source images (``mask[i]`` lies on
``ctx.sources[i]``); frames without any segmented pixel are omitted. Each segment carries the
manifest's SNOMED category and type, the algorithm (family "Artificial Intelligence") and a
tracking identifier and UID that the TID 1500 SR repeats, so a viewer can link the two.

This module also holds the few identity helpers the SR and KOS builders share
(:func:`algorithm`, :func:`device_observer`, :func:`node_attributes`, :func:`stamp`).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.core.contract import MANUFACTURER, ResultContext, Segment
from node.core.errors import PermanentError
from node.sr_writer import _highdicom
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.identity import concept, node_attributes, stamp, tracking_id

_highdicom.install()  # one IOD lookup per SOP Class, not per source image (see there)

#: Content Description (LO, at most 64 characters): the short form of AI_DISCLAIMER
SEG_CONTENT_DESCRIPTION = "AI-generated, not for diagnosis without clinician review"
SEG_CONTENT_LABEL = "AI_SEG"
#: the node is software: it has no serial number (Device Serial Number is type 1 in SEG)


def build_seg(ctx: ResultContext) -> hd.seg.Segmentation:
    """The SEG of ``ctx.result.segments`` on ``ctx.sources``, in the sources' study."""
    segments = ctx.result.segments
    if not segments:
        raise PermanentError(f"{ctx.manifest.name}: the result has no segments to write as SEG")
    _check_geometry(ctx, segments)
    descriptions = [_description(ctx, number, s) for number, s in enumerate(segments, start=1)]
    pixels = _pixels(segments)
    try:
        seg = hd.seg.Segmentation(
            source_images=list(ctx.sources),
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=ctx.uid("SEG-series"),
            series_number=SERIES_NUMBERS["SEG"],
            sop_instance_uid=ctx.uid("SEG"),
            instance_number=1,
            content_description=SEG_CONTENT_DESCRIPTION,
            content_label=SEG_CONTENT_LABEL,
            omit_empty_frames=True,
            **node_attributes(ctx, "segmentation",
                              [c for s in segments for c in (s.category, s.type)]),
        )
    except (ValueError, TypeError) as exc:
        raise PermanentError(f"{ctx.manifest.name}: highdicom refused the SEG ({exc})") from exc
    dimensions = ctx.uid("SEG-dimensions")  # highdicom draws a random one
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimensions
    return stamp(seg, ctx)


def _description(ctx: ResultContext, number: int, s: Segment) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=s.name[:64],
        segmented_property_category=concept(s.category),
        segmented_property_type=concept(s.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ctx.manifest.name, version=ctx.manifest.version,
            family=codes.cid7162.ArtificialIntelligence, source=MANUFACTURER),
        tracking_uid=ctx.uid("tracking", number),
        tracking_id=tracking_id(ctx, s.name),
    )


def _pixels(segments: tuple[Segment, ...]) -> np.ndarray:
    """The masks as highdicom takes them fastest.

    Segments that do not overlap become one label array (voxel = segment number): highdicom then
    only checks its maximum, where a stack of masks costs it a sum over the last axis (2 s for
    two 300x512x512 masks). Overlapping segments stay stacked (slices, rows, columns, segments).
    """
    if len(segments) == 1:
        return segments[0].mask
    dtype = np.uint8 if len(segments) < 256 else np.uint16
    labels = np.zeros(segments[0].mask.shape, dtype=dtype)
    for number, s in enumerate(segments, start=1):
        mask = s.mask.astype(bool, copy=False)
        if number > 1 and np.logical_and(labels, mask).any():  # labelled voxels: the union
            return np.stack([s.mask for s in segments], axis=-1)
        np.copyto(labels, dtype(number), where=mask)
    return labels


def _check_geometry(ctx: ResultContext, segments: tuple[Segment, ...]) -> None:
    first: Dataset = ctx.sources[0]
    if len(ctx.sources) > 1 and "FrameOfReferenceUID" not in first:
        raise PermanentError(f"{ctx.manifest.name}: the source series has no Frame of Reference "
                             "UID: its slices cannot be placed in a SEG")
    expected = (len(ctx.sources), int(first.Rows), int(first.Columns))
    for s in segments:
        if s.mask.shape != expected:
            raise PermanentError(f"{ctx.manifest.name}: mask of segment {s.label} has shape "
                                 f"{s.mask.shape}, the source series {expected}")

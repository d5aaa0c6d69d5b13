"""TID 1500 Measurement Report (Comprehensive 3D SR) of a model's result, over highdicom.

Content tree (IHE AIR):

- Procedure Reported: the imaging procedure of the sources (never the algorithm);
- Observation Context: the node as a DEVICE observer;
- Imaging Measurements:
  - one TID 1411 group per segment, referencing that segment of the SEG (with its source
    images): tracking identifier and UID (the SEG segment's), finding category and type (the
    segment's codes), finding site (anatomical segments), the segment's measurements;
  - one TID 1501 group with the measurements that belong to no single segment (whole volume);
  - one TID 1501 group for a classification: its ONE finding (the predicted class, which may be
    "no tumour") as finding type with its probability, and the probability of every other class
    as a measurement named "Probability of <class>" (a local code, ``node.core.local_codes``),
    never as a finding; the key images as source images;
  - one TID 1410 group per strongest region of a heatmap (a classifier's explanation): the
    heatmap's method (Grad-CAM, Score-CAM, ...) as the group's method, the region as a rectangle
    (SCOORD POLYLINE "Image Region", pixel coordinates) on its source image, and the region's
    share of the heatmap's heat in percent; no finding type (the classification's finding
    stays the one finding);
- a measurement with an interval (``Measurement.interval``, e.g. brain-mask's test-time flips)
  carries it twice: as TID 310 Measurement Properties of the measurement (upper and lower
  measurement uncertainty, SCT 371886008 / 371885007, as distances from the value), and as two
  measurements of their own beside it, "<name>, lower 95% limit" and "... upper ...", whose
  Measurement Method names how the interval was estimated (local codes) so that a viewer that
  shows a group's measurements shows the interval;
- Qualitative Evaluations (TID 1500 rows 12-14): the triage category and AI_DISCLAIMER; with a
  quality flag, DCM "Analysis Quality Rating" = SCT "Uncertain" (or the flag's local code) and
  its reason as a comment.

Every group and measurement names the algorithm (TID 4019).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.core import local_codes
from node.core.contract import (
    AI_DISCLAIMER,
    ANALYSIS_QUALITY_RATING,
    QUALITY_FLAGS,
    Classification,
    Heatmap,
    HeatmapRegion,
    Measurement,
    ResultContext,
    Segment,
    Triage,
    anatomical,
    classification,
)
from node.core.errors import PermanentError
from node.core.manifest import CodedConcept
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.identity import (
    algorithm,
    concept,
    device_observer,
    node_attributes,
    stamp,
    tracking_id,
)

#: Procedure Reported (DCID 100) by (Modality, Body Part Examined), then by Modality alone
_PROCEDURE_OF_REGION = {
    ("CT", "CHEST"): hd.sr.CodedConcept("24627-2", "LN", "CT Chest"),
    ("CT", "HEAD"): hd.sr.CodedConcept("24725-4", "LN", "CT Head"),
    ("MR", "HEAD"): hd.sr.CodedConcept("24590-2", "LN", "MRI Head"),
    ("MR", "BRAIN"): hd.sr.CodedConcept("24590-2", "LN", "MRI Head"),
}
_PROCEDURE_OF_MODALITY = {
    modality: hd.sr.CodedConcept.from_code(code) for modality, code in (
        ("CT", codes.cid100.CTUnspecifiedBodyRegion),
        ("MR", codes.cid100.MRIUnspecifiedBodyRegion),
        ("PT", codes.cid100.PETUnspecifiedBodyRegion),
        ("NM", codes.cid100.NMUnspecifiedBodyRegion),
        ("CR", codes.cid100.XRUnspecifiedBodyRegion),
        ("DX", codes.cid100.XRUnspecifiedBodyRegion),
    )
}
#: Code Meanings of the UCUM units the models use (the code value is the unit itself)
_UCUM_MEANINGS = {"mL": "milliliter", "L": "liter", "mm": "millimeter", "mm2": "square millimeter",
                  "mm3": "cubic millimeter", "cm3": "cubic centimeter", "%": "Percent",
                  "[hnsf'U]": "Hounsfield unit", "1": "no units", "{probability}": "probability"}
_PROBABILITY_UNIT = "{probability}"
#: triage as a qualitative evaluation: Priority -> SNOMED CT priority qualifiers
_TRIAGE = {
    Triage.ROUTINE: hd.sr.CodedConcept("50811001", "SCT", "Routine"),
    Triage.PRIORITY: hd.sr.CodedConcept("394849002", "SCT", "High priority"),
    Triage.URGENT: hd.sr.CodedConcept("103391001", "SCT", "Urgent"),
}
_Group = (hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
          | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
          | hd.sr.MeasurementsAndQualitativeEvaluations)
#: the coding scheme of the node's own codes (also the manifests' "99DCMNODE")
LOCAL_SCHEME = local_codes.SCHEME
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: the tracking UID index of the classification group (segments use their number, 0 the rest)
CLASSIFICATION_TRACKING = 1000
#: heatmap regions' tracking UID indices: this + 100 x the heatmap's position + the region's
REGION_TRACKING = 2000
#: a heatmap region's share of the map's heat (a local code: no standard one exists)
HEATMAP_SHARE = local_codes.name_code("Heatmap share")


def build_sr(ctx: ResultContext, seg: Dataset | None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 SR of ``ctx.result``; ``seg`` is its SEG (None when it has no segments)."""
    if ctx.result.segments and seg is None:
        raise PermanentError(f"{ctx.manifest.name}: segments need their SEG to be reported")
    classes = classification(ctx.result)
    groups: list[_Group] = [
        *(_segment_group(ctx, seg, n, s) for n, s in enumerate(ctx.result.segments, start=1)
          if seg is not None),
        *_whole_volume_group(ctx),
        *([_classification_group(ctx, classes)] if classes is not None else []),
        *(_region_group(ctx, n, h, m, r) for n, h in enumerate(ctx.result.heatmaps)
          for m, r in enumerate(h.regions, start=1)),
    ]
    if not groups:
        raise PermanentError(f"{ctx.manifest.name}: the result has nothing to report")
    try:
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(
                observer_device_context=device_observer(ctx)),
            procedure_reported=procedure_reported(ctx.sources[0]),
            imaging_measurements=groups,
        )
        report[0].ContentSequence.append(_qualitative_evaluations(ctx))
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*([seg] if seg is not None else []), *ctx.sources],
            content=report[0],
            series_instance_uid=ctx.uid("SR-series"),
            series_number=SERIES_NUMBERS["SR"],
            sop_instance_uid=ctx.uid("SR"),
            instance_number=1,
            is_complete=True,  # the report says all the model found; it is not verified
            **node_attributes(ctx, "measurements", _codes_used(ctx)),
        )
    except (ValueError, TypeError) as exc:
        raise PermanentError(f"{ctx.manifest.name}: highdicom refused the SR ({exc})") from exc
    return stamp(sr, ctx)


def procedure_reported(source: Dataset) -> hd.sr.CodedConcept:
    """The imaging procedure of the source series (TID 1500 row 4), never the algorithm."""
    modality = str(source.get("Modality", "")).upper()
    body_part = str(source.get("BodyPartExamined", "")).upper()
    return (_PROCEDURE_OF_REGION.get((modality, body_part))
            or _PROCEDURE_OF_MODALITY.get(modality)
            or hd.sr.CodedConcept.from_code(codes.cid100.ImagingProcedure))


def unit(ucum: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(ucum, "UCUM", _UCUM_MEANINGS.get(ucum, ucum))


def _segment_group(ctx: ResultContext, seg: Dataset, number: int,
                   s: Segment) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=ctx.uid("tracking", number), identifier=tracking_id(ctx, s.name)),
        referenced_segment=_referenced_segment(ctx, seg, number, s),
        finding_category=concept(s.category),
        finding_type=concept(s.type),
        finding_sites=[hd.sr.FindingSite(concept(s.type))] if anatomical(s) else None,
        algorithm_id=algorithm(ctx),
        measurements=[n for m in ctx.result.measurements if m.segment_label == s.label
                      for n in _measurements(ctx, m)],
    )


def _referenced_segment(ctx: ResultContext, seg: Dataset, number: int,
                        s: Segment) -> hd.sr.ReferencedSegment:
    """The segment in the SEG and the source images it lies on.

    Built from the mask, not by highdicom's ``from_segmentation``, which expects a per-frame
    Segment Identification that highdicom 0.28 moves to the shared groups for one segment.
    """
    on = np.flatnonzero(s.mask.reshape(len(s.mask), -1).any(axis=1))
    images = [hd.sr.SourceImageForSegmentation.from_source_image(ctx.sources[i]) for i in on]
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number, source_images=images or None,
        # an empty segment lies on no image: name the series instead
        source_series=None if images else hd.sr.SourceSeriesForSegmentation(
            ctx.sources[0].SeriesInstanceUID))


def _whole_volume_group(ctx: ResultContext) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Measurements of no single segment, at the sites of all anatomical segments."""
    labels = {s.label for s in ctx.result.segments}
    loose = [m for m in ctx.result.measurements if m.segment_label not in labels]
    if not loose:
        return []
    sites = [hd.sr.FindingSite(concept(s.type)) for s in ctx.result.segments if anatomical(s)]
    return [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=ctx.uid("tracking", 0), identifier=tracking_id(ctx, "whole volume")),
        finding_sites=sites or None,
        algorithm_id=algorithm(ctx),
        measurements=[n for m in loose for n in _measurements(ctx, m)],
        source_images=_key_images(ctx),
    )]


def _classification_group(ctx: ResultContext,
                          classes: Classification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The predicted class as the finding, with its probability; the other classes'
    probabilities as measurements 'Probability of <class>'."""
    def probability(name: hd.sr.CodedConcept, value: float) -> hd.sr.Measurement:
        return hd.sr.Measurement(name=name, value=value, unit=unit(_PROBABILITY_UNIT),
                                 algorithm_id=algorithm(ctx))

    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=ctx.uid("tracking", CLASSIFICATION_TRACKING),
            identifier=tracking_id(ctx, "classification")),
        finding_type=concept(classes.finding.concept),
        algorithm_id=algorithm(ctx),
        measurements=[
            probability(hd.sr.CodedConcept.from_code(codes.DCM.Probability),
                        classes.finding.probability),
            *(probability(concept(local_codes.probability_of(o.concept)), o.probability)
              for o in classes.others)],
        source_images=_key_images(ctx),
    )


def _region_group(ctx: ResultContext, n: int, heat: Heatmap, number: int,
                  r: HeatmapRegion) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One strongest region of heatmap ``n`` as a rectangle on its source image: pixel
    (column, row) coordinates, the region's outer pixel edges (a pixel's centre is at +0.5)."""
    corners = np.array([(r.left, r.top), (r.right + 1, r.top), (r.right + 1, r.bottom + 1),
                        (r.left, r.bottom + 1), (r.left, r.top)], dtype=np.float64)
    method = heat.method or "heatmap"
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=ctx.uid("tracking", REGION_TRACKING + 100 * n + number),
            identifier=tracking_id(ctx, f"{method} region {number}")),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
            source_image=hd.sr.SourceImageForRegion.from_source_image(
                ctx.sources[heat.slice_index])),
        method=concept(local_codes.explanation_method(heat.method)) if heat.method else None,
        algorithm_id=algorithm(ctx),
        measurements=[hd.sr.Measurement(name=concept(HEATMAP_SHARE), value=100.0 * r.share,
                                        unit=unit("%"), algorithm_id=algorithm(ctx))],
    )


def _measurements(ctx: ResultContext, m: Measurement) -> list[hd.sr.Measurement]:
    """The measurement, and the ends of its interval as measurements of their own."""
    if m.interval is None:
        return [hd.sr.Measurement(name=concept(_measurement_name(m)), value=m.value,
                                  unit=unit(m.unit), algorithm_id=algorithm(ctx))]
    i = m.interval
    measured = hd.sr.Measurement(name=concept(_measurement_name(m)), value=m.value,
                                 unit=unit(m.unit), algorithm_id=algorithm(ctx))
    # TID 310's uncertainty rows in the measurement's own unit (highdicom's MeasurementProperties
    # writes them with unit "1"): distances from the value, never below 0
    measured[0].ContentSequence.extend(
        hd.sr.NumContentItem(name=name, value=max(0.0, distance), unit=unit(m.unit),
                             relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)
        for name, distance in ((codes.SCT.RangeOfUpperMeasurementUncertainty, i.upper - m.value),
                               (codes.SCT.RangeOfLowerMeasurementUncertainty, m.value - i.lower)))
    method = concept(local_codes.uncertainty_method(i.method))
    return [measured,
            *(hd.sr.Measurement(name=concept(local_codes.interval_limit(m.name, side, i.level)),
                                value=value, unit=unit(m.unit), method=method,
                                algorithm_id=algorithm(ctx))
              for side, value in (("lower", i.lower), ("upper", i.upper)))]


def _codes_used(ctx: ResultContext) -> list[CodedConcept]:
    r = ctx.result
    return [*(c for s in r.segments for c in (s.category, s.type)),
            *(_measurement_name(m) for m in r.measurements), *(f.concept for f in r.findings),
            *(local_codes.probability_of(f.concept) for f in r.findings),
            *(local_codes.explanation_method(h.method) for h in r.heatmaps if h.method),
            *([HEATMAP_SHARE] if any(h.regions for h in r.heatmaps) else []),
            *(c for m in r.measurements if m.interval is not None for c in (
                local_codes.uncertainty_method(m.interval.method),
                *(local_codes.interval_limit(m.name, side, m.interval.level)
                  for side in ("lower", "upper")))),
            *([local_codes.name_code(r.quality.flag)]
              if r.quality is not None and r.quality.flag not in QUALITY_FLAGS else [])]


def _measurement_name(m: Measurement) -> CodedConcept:
    """The measurement's concept; without one, the node's code of its name (never cut)."""
    return m.concept or local_codes.name_code(m.name)


def _key_images(ctx: ResultContext) -> list[hd.sr.SourceImageForMeasurementGroup] | None:
    images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ctx.sources[i])
              for i in ctx.result.key_slices]
    return images or None


def _qualitative_evaluations(ctx: ResultContext) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the triage category (row 13, CODE) and the disclaimer (row 14, TEXT);
    with a quality flag, the flag (CODE) and its reason (TEXT)."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=contains)
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=codes.SCT.Priority, value=_TRIAGE[ctx.result.triage],
                              relationship_type=contains),
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=AI_DISCLAIMER,
                              relationship_type=contains),
    ]
    quality = ctx.result.quality
    if quality is not None:
        flag = QUALITY_FLAGS.get(quality.flag) or local_codes.name_code(quality.flag)
        items += [hd.sr.CodeContentItem(name=concept(ANALYSIS_QUALITY_RATING),
                                        value=concept(flag), relationship_type=contains),
                  hd.sr.TextContentItem(name=codes.DCM.Comment,
                                        value=f"Quality flag {quality.flag}: {quality.reason}",
                                        relationship_type=contains)]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container

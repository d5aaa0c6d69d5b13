"""What every result object shares: the node's identity as equipment and observer, the
original patient and study, deterministic dates, coded concepts, algorithm identification."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, DT, TM

from node import __version__
from node.core.contract import MANUFACTURER, ResultContext, deterministic_uid
from node.core.manifest import CodedConcept

_Obj = TypeVar("_Obj", bound=hd.SOPClass)

DEVICE_SERIAL_NUMBER = "n/a"
DEIDENTIFICATION_NOT_STATED = "Not stated by the source images"


def device_uid(model_name: str) -> str:
    """The observer device's UID: the node running this model, stable across jobs."""
    return deterministic_uid("device", f"{MANUFACTURER}/{model_name}")


def concept(c: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


def tracking_id(ctx: ResultContext, name: str) -> str:
    """The human-readable tracking identifier of a segment or finding (LO: 64 characters)."""
    return f"{ctx.manifest.name}: {name}"[:64]


def algorithm(ctx: ResultContext) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of the model (for the SR's content tree)."""
    return hd.sr.AlgorithmIdentification(
        name=ctx.manifest.name, version=ctx.manifest.version,
        family=codes.cid7162.ArtificialIntelligence, manufacturer=MANUFACTURER)


def device_observer(ctx: ResultContext) -> hd.sr.ObserverContext:
    """TID 1002 Observer Context: the node, a device, as the observer of the result."""
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(ctx.manifest.name), name=MANUFACTURER, manufacturer_name=MANUFACTURER,
            model_name=ctx.manifest.name, serial_number=DEVICE_SERIAL_NUMBER))


def node_attributes(ctx: ResultContext, what: str,
                    used: Iterable[CodedConcept] = ()) -> dict[str, Any]:
    """General Equipment, dates and the private coding schemes among the codes ``used``.

    Keyword arguments of any highdicom SOP class constructor.
    """
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": ctx.manifest.name,
        "software_versions": f"{MANUFACTURER} {__version__}",
        "device_serial_number": DEVICE_SERIAL_NUMBER,
        "series_description": ctx.series_description(what),
        "content_date": ctx.created.date(),
        "content_time": ctx.created.time(),
        "series_date": ctx.created.date(),
        "series_time": ctx.created.time(),
        "coding_schemes": _local_coding_schemes(used) or None,
    }


def stamp(ds: _Obj, ctx: ResultContext, source: Dataset | None = None) -> _Obj:
    """What highdicom's keywords leave out, on any result object built from ``ctx.sources``.

    - every Patient and General Study attribute of the sources (highdicom's SR and KOS copy only
      the basic ones);
    - both software versions (the node's and the model's);
    - Instance Creation Date/Time and Contribution DateTime at ``ctx.created`` instead of the
      wall clock, so that a retried job sends the same bytes again;
    - sources marked Patient Identity Removed without saying how (as real de-identified data
      often are) make the result invalid: it then says that the method is not stated.
    """
    ds.copy_patient_and_study_information(source if source is not None else ctx.sources[0])
    ds.add_new("SoftwareVersions", "LO", [f"{MANUFACTURER} {__version__}", ctx.algorithm[:64]])
    ds.InstanceCreationDate = DA(ctx.created.date())
    ds.InstanceCreationTime = TM(ctx.created.time())
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(ctx.created)
    if ds.get("PatientIdentityRemoved") == "YES" and not (
            "DeidentificationMethod" in ds or "DeidentificationMethodCodeSequence" in ds):
        ds.DeidentificationMethod = DEIDENTIFICATION_NOT_STATED
    return ds


def _local_coding_schemes(used: Iterable[CodedConcept]) -> list[CodingSchemeIdentificationItem]:
    """Private ("99...") coding schemes among ``used``, declared as PS3.3 C.12.1.1.4 asks."""
    schemes = sorted({c.scheme for c in used if c.scheme.startswith("99")})
    return [CodingSchemeIdentificationItem(designator=scheme, name=f"{MANUFACTURER} local codes",
                                           responsible_organization=MANUFACTURER)
            for scheme in schemes]

"""Key Object Selection (KOS) of a model's result, over highdicom (TID 2010).

Flags the key images (``ctx.result.key_slices`` -> ``ctx.sources[i]``) and references the
result objects (SR, SEG, ...) under the title "Of Interest" (DCM 113000, CID 7010), with a
Key Object Description that states the result in a line and carries AI_DISCLAIMER.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.core.contract import AI_DISCLAIMER, ResultContext
from node.core.errors import PermanentError
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.identity import device_observer, node_attributes, stamp

DOCUMENT_TITLE = codes.cid7010.OfInterest


def build_kos(ctx: ResultContext, objects: Sequence[Dataset]) -> hd.ko.KeyObjectSelectionDocument:
    """The KOS of the key images of ``ctx.result`` and of ``objects`` (the node's results)."""
    key_images = [ctx.sources[i] for i in ctx.result.key_slices]
    referenced = [*key_images, *objects]
    if not referenced:
        raise PermanentError(f"{ctx.manifest.name}: no key image and no object to select")
    try:
        content = hd.ko.KeyObjectSelection(
            document_title=DOCUMENT_TITLE,
            referenced_objects=referenced,
            observer_device_context=device_observer(ctx),
            description=describe(ctx),
        )
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=referenced,
            content=content,
            series_instance_uid=ctx.uid("KOS-series"),
            series_number=SERIES_NUMBERS["KOS"],
            sop_instance_uid=ctx.uid("KOS"),
            instance_number=1,
            **node_attributes(ctx, "key images"),
        )
    except (ValueError, TypeError) as exc:
        raise PermanentError(f"{ctx.manifest.name}: highdicom refused the KOS ({exc})") from exc
    return stamp(kos, ctx)


def describe(ctx: ResultContext) -> str:
    """One paragraph: algorithm, measurements, most probable finding, triage, key images."""
    r = ctx.result
    parts = [f"{ctx.algorithm}"]
    parts += [f"{m.name} {m.value:.4g} {m.unit}" for m in r.measurements]
    if r.findings:
        top = max(r.findings, key=lambda f: f.probability)
        parts.append(f"most probable finding {top.concept.meaning} "
                     f"(probability {top.probability:.3f})")
    parts.append(f"triage {r.triage.value}")
    if r.key_slices:
        numbers = ", ".join(str(ctx.sources[i].get("InstanceNumber", i + 1))
                            for i in r.key_slices)
        parts.append(f"key images (instance number): {numbers}")
    return "; ".join(parts) + f". {AI_DISCLAIMER}."

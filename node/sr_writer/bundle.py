"""All result objects of one model run, built in dependency order.

SEG (when the model segments) -> TID 1500 SR referencing it -> SC overlays -> PDF report with
their thumbnails -> its Encapsulated PDF instance -> KOS flagging the key images and listing the
SR, SEG and PDF. Pure: the caller writes or sends them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from node.core.contract import ResultContext
from node.sr_writer import _highdicom
from node.sr_writer.kos import build_kos
from node.sr_writer.pdf import build_encapsulated_pdf, build_pdf
from node.sr_writer.sc import build_sc, thumbnail
from node.sr_writer.seg import build_seg
from node.sr_writer.sr import build_sr

_highdicom.install()  # for the SR's image references too (see there)


@dataclass(frozen=True)
class ResultObjects:
    seg: Dataset | None
    sr: Dataset
    sc: tuple[Dataset, ...]
    pdf: bytes
    pdf_instance: Dataset
    kos: Dataset

    def named(self) -> list[tuple[str, Dataset]]:
        """(file stem, object) in the order a PACS should receive them."""
        out = [("seg", self.seg)] if self.seg is not None else []
        out += [("sr", self.sr)]
        out += [(f"sc-{n + 1}", sc) for n, sc in enumerate(self.sc)]
        out += [("report-pdf", self.pdf_instance), ("kos", self.kos)]
        return out


def build_all(ctx: ResultContext) -> ResultObjects:
    seg = build_seg(ctx) if ctx.result.segments else None
    sr = build_sr(ctx, seg)
    sc = tuple(build_sc(ctx))
    pdf = build_pdf(ctx, [thumbnail(s) for s in sc])
    pdf_instance = build_encapsulated_pdf(ctx, pdf)
    kos = build_kos(ctx, [o for o in (sr, seg, pdf_instance) if o is not None])
    return ResultObjects(seg, sr, sc, pdf, pdf_instance, kos)

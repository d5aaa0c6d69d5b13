"""DIMSE status codes the node answers with (PS3.7 Annex C, PS3.4 Annex B.2.3)."""

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    #: C-STORE failure: refused, out of resources (free disk below the threshold, ledger down).
    OUT_OF_RESOURCES = 0xA700
    #: C-STORE failure: the data set does not match the SOP class of the request.
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: C-STORE failure: cannot understand (unparseable, or lacks the identifying attributes).
    CANNOT_UNDERSTAND = 0xC000
    #: C-STORE failure: an unexpected error in the node; the data was kept for inspection.
    PROCESSING_FAILURE = 0x0110


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ diagnostics for source 1 (DICOM UL service-user), PS3.8 9.3.4."""

    NO_REASON = 0x01
    CALLING_AE_NOT_RECOGNISED = 0x03
    CALLED_AE_NOT_RECOGNISED = 0x07


REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01

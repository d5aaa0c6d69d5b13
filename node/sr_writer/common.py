"""What every result writer shares: the node's identity and the series numbers of its results.

A writer is a pure function ``build_<iod>(ctx, ...) -> Dataset``: it builds one DICOM object in
the patient's own study from the ORIGINAL (re-identified) source instances and the model's
result. UIDs are derived from the job (study, generation, model), so a retried job produces the
same objects and the PACS stores them once.
"""

from __future__ import annotations

from node import __version__

SOFTWARE_VERSIONS = __version__

#: series numbers of the node's result series in the study (high, so they sort after images)
SERIES_NUMBERS = {"SEG": 9001, "SR": 9002, "SC": 9003, "KOS": 9004, "PDF": 9005}

"""De-identified output is byte for byte what it was: a golden hash over real files.

The de-identification is tuned for speed (issue 15 item 5); this test pins its output, so a
faster version that writes one byte differently fails here. Fixed keys, the node's version
fixed in De-identification Method, every file read and written the way the stage does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from node.core.keys import DeidKeys
from node.core.settings import DeidSettings
from node.pipeline.deid import deidentify as deidentify_module
from node.pipeline.deid import files
from node.pipeline.deid.deidentify import deidentify
from node.pipeline.deid.files import read_instance, write_instance
from node.pipeline.deid.profile import load_profile
from tests.data import sample_file

KEYS = DeidKeys.from_secret(bytes(range(32)))

#: pydicom's and pydicom-data's files: explicit and implicit VR, big endian, private tags and
#: private sequences, encapsulated pixel data, deep sequences (RT), an SR content tree, multi-frame, overlays (repeating group 60xx)
FILES = (
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "693_UNCR.dcm",
    "JPEG2000.dcm", "rtplan.dcm", "rtdose.dcm", "test-SR.dcm", "examples_overlay.dcm",
    "priv_SQ.dcm", "UN_sequence.dcm", "liver_1frame.dcm", "emri_small.dcm", "MR_small_padded.dcm",
    "waveform_ecg.dcm", "reportsi.dcm",
)

OPTIONS = {
    "default": DeidSettings(allow_burned_in=True),
    "options": DeidSettings(allow_burned_in=True, retain_long_modified_dates=True,
                            clean_descriptors=True, retain_patient_characteristics=True,
                            clean_structured_content=True),
    "safe-private": DeidSettings(allow_burned_in=True, retain_safe_private=True,
                                 safe_private=("GEMS_IDEN_01|0009|01",
                                               "SIEMENS CT VA0  COAD|0019|10")),
}

#: sha256 over (file name, option set, output bytes) for every pair above; recorded before the
#: speed-ups of issue 15 and unchanged by them
GOLDEN = "f1128d1265a921cb2a365721edcc3ef320633e63e632a83113c22c7a7bb32c25"


#: the one file that save_as writes (big endian); files.encode writes the others
SAVED = {"MR_small_bigendian.dcm"}


def _digest(tmp: Path, encoded: set[str]) -> str:
    total = hashlib.sha256()
    profiles = {option: load_profile(settings) for option, settings in OPTIONS.items()}
    for name in FILES:
        for option, profile in profiles.items():
            out = tmp / f"{option}-{name}"
            result = deidentify(read_instance(sample_file(name)), profile, KEYS)
            if files.encode(result.dataset) is not None:
                encoded.add(name)
            write_instance(result.dataset, out)
            total.update(f"{name}|{option}|".encode())
            total.update(hashlib.sha256(out.read_bytes()).digest())
    return total.hexdigest()


def test_output_is_byte_identical_to_the_recorded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deidentify_module, "__version__", "0.0.0")
    encoded: set[str] = set()
    assert _digest(tmp_path, encoded) == GOLDEN
    assert set(FILES) - encoded == SAVED  # both ways of writing are pinned

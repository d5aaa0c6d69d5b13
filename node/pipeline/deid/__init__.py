"""De-identification (DICOM PS3.15 Annex E) and re-identification of results."""

"""The DICOM wire: the C-STORE/C-ECHO SCP (and later the C-STORE SCU)."""

"""The DICOM wire: the C-STORE/C-ECHO SCP, the C-STORE SCU, recovery of the spool; its
hand-written fast paths in the private _-modules (the pynetdicom internals they use: _pynetdicom.py)."""

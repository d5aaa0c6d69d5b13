"""The DICOM wire: the C-STORE/C-ECHO SCP, the C-STORE SCU, recovery of the spool.

Its hand-written fast paths are the private ``_``-modules; the pynetdicom internals they use
are named in ``_pynetdicom.py``.
"""

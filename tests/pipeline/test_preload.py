"""The IOD tables are read when a process that runs the stages starts, not by its first study."""

from __future__ import annotations

from highdicom import _standard_utils as highdicom_tables

from node.pipeline import preload
from node.pipeline.deid import iod


def test_start_reads_the_tables_the_stages_use_first() -> None:
    preload.start().join(timeout=60)
    assert iod._tables.cache_info().currsize == 1
    for loader in (highdicom_tables.get_sop_class_iod_map, highdicom_tables.get_iod_module_map,
                   highdicom_tables.get_module_attribute_map):
        assert loader.cache_info().currsize == 1
    # a study's first instance finds its IOD's sequence Types without reading anything
    misses = iod._tables.cache_info().misses
    assert iod.sequence_types("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    assert iod._tables.cache_info().misses == misses

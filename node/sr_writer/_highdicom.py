"""One lookup of highdicom's made once per question instead of once per source image.

highdicom 0.28's ``is_attribute_in_iod(attribute, sop_class_uid, exclude_path_elements)`` walks
every attribute of every module of the IOD on each call (about 1 ms for a CT image, whose IOD
has no Number of Frames, so the walk never stops early). A SEG asks ``is_multiframe_image`` of
each of its 300 source images, and an SR's image references ask ``does_iod_have_pixel_data`` of
each referenced image: about 0.3 s of CPU per object for the same few answers. The answer
depends only on the arguments and highdicom's tables, which do not change in a process, so
:func:`install` puts a memoised wrapper in the function's place; the objects built are the same.

highdicom internals touched (pinned version in pyproject.toml):
``highdicom._standard_utils.is_attribute_in_iod``, looked up as a module global by
``is_multiframe_image`` and ``does_iod_have_pixel_data`` in the same module. Other modules that
imported the name directly keep the original (they ask once or twice per object).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from highdicom import _standard_utils

_ORIGINAL = _standard_utils.is_attribute_in_iod


@lru_cache(maxsize=4096)
def _answer(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return _ORIGINAL(attribute, sop_class_uid, None if exclude is None else list(exclude))


def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                        exclude_path_elements: Sequence[str] | None = None) -> bool:
    """``highdicom._standard_utils.is_attribute_in_iod``, answered once per argument set (an
    unknown SOP Class raises KeyError each time, as the original does)."""
    exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _answer(str(attribute), str(sop_class_uid), exclude)


def install() -> None:
    """Put the memoised lookup in highdicom's module (idempotent)."""
    _standard_utils.is_attribute_in_iod = is_attribute_in_iod

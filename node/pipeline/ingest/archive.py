"""The DICOM files inside an uploaded zip, read with bounds.

A zip names its members' sizes and paths itself, so neither is trusted: at most
``MAX_MEMBERS`` files, at most ``MAX_TOTAL_BYTES`` uncompressed in all (counted while
reading, not from the header), no member that expands more than ``MAX_RATIO`` times its
compressed size (a zip bomb), and no absolute path or ``..`` (nothing is written under the
member's name, but such a zip was not made by a PACS export and is refused whole).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

from node.core.errors import PermanentError

#: most files one zip may hold
MAX_MEMBERS = 10_000
#: most bytes all its members may expand to
MAX_TOTAL_BYTES = 4 * 1024**3
#: most a member may expand relative to its compressed size (DICOM compresses 2-10 times)
MAX_RATIO = 200


class ArchiveRefused(PermanentError):
    """A zip the node does not open (unsafe paths, too many files, too large, a bomb)."""


def _safe(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts and ":" not in name


def members(data: bytes, *, max_total: int = MAX_TOTAL_BYTES) -> list[tuple[str, bytes]]:
    """Each regular member's name and content, in the zip's order."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveRefused(f"not a readable zip ({exc})") from None
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_MEMBERS:
            raise ArchiveRefused(f"the zip holds {len(infos)} files (at most {MAX_MEMBERS})")
        for info in infos:
            if not _safe(info.filename):
                raise ArchiveRefused("the zip holds a path outside itself (absolute or '..')")
        out: list[tuple[str, bytes]] = []
        total = 0
        for info in infos:
            limit = min(max_total - total, max(info.compress_size, 1) * MAX_RATIO)
            try:
                with archive.open(info) as member:
                    content = member.read(limit + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
                raise ArchiveRefused(f"a member could not be read ({exc})") from None
            if len(content) > limit:
                raise ArchiveRefused("the zip expands too far (a zip bomb, or over the size "
                                     "limit)")
            total += len(content)
            out.append((info.filename, content))
        return out

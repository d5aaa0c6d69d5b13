"""The Study page's key images through the web app: who gets the PNGs, what a preset must be,
what the images hold (the de-identified slice under the window, the model's contour on a
transparent layer, nothing in the file but pixels), and the disk cache they come from after
the first request."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from node.core.accounts import Role
from node.web.console import keyimages
from tests.web.conftest import Api
from tests.web.study_scene import KEY, analysed_job, deid_folder, run_id

UID = "1.2.826.0.1.3680043.8.498.7701"


@pytest.fixture
def job(api: Api) -> Iterator[tuple[Api, int, int]]:
    found = analysed_job(api.ledger, api.ctx.settings, UID)
    yield api, found, run_id(api.ledger, found)


def _url(job: int, run: int, index: int = KEY, layer: str = "image.png",
         preset: str | None = "soft-tissue") -> str:
    query = "" if preset is None else f"?preset={preset}"
    return f"/studies/{job}/key-images/{run}/{index}/{layer}{query}"


def _image(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_the_roles_that_read_result_files_get_the_images_and_no_other(
        job: tuple[Api, int, int]) -> None:
    api, found, run = job
    r = api.client.get(_url(found, run), follow_redirects=False)  # no session: log in first
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    for role in Role:
        api.login(role)
        for layer in ("image.png", "overlay.png"):
            r = api.client.get(_url(found, run, layer=layer), follow_redirects=False)
            if role is Role.OPERATOR:
                assert r.status_code == 403
                assert r.headers["content-type"].startswith("text/html")
            else:
                assert r.status_code == 200, r.text
                assert r.headers["content-type"] == "image/png"
                assert r.headers["cache-control"].startswith("private")
        page = api.client.get(f"/studies/{found}").text  # the page shows them to the same roles
        assert ('id="key-images"' in page) == (role is not Role.OPERATOR)


def test_without_javascript_presets_and_overlay_are_links_and_images_come_from_the_cache(
        job: tuple[Api, int, int]) -> None:
    api, found, run = job
    api.login(Role.RADIOLOGIST)
    page = api.client.get(f"/studies/{found}").text
    assert f'src="{_url(found, run)}"' in page  # CT without lung segments: soft tissue
    assert f'href="?preset=bone#key-images-{run}"' in page
    assert f'href="?preset=soft-tissue&amp;overlay=off#key-images-{run}"' in page
    page = api.client.get(f"/studies/{found}?preset=bone&overlay=off").text
    assert f'src="{_url(found, run, preset="bone")}"' in page
    assert re.search(r'<img class="overlay"[^>]* hidden>', page)
    assert f'href="?preset=bone#key-images-{run}"' in page  # the switch turns it on again
    page = api.client.get(f"/studies/{found}?preset=auto").text  # an MR preset: the default
    assert f'src="{_url(found, run)}"' in page
    # each image is rendered once, holds pixels only, and is read from the cache after
    first = api.client.get(_url(found, run, preset="lung")).content
    assert b"tEXt" not in first and b"iTXt" not in first and b"zTXt" not in first
    cache = api.ctx.settings.var_path / "cache" / "key-images" / str(found)
    assert sorted(p.name for p in cache.glob("*.png")) == [f"r{run}-{KEY}-lung.png"]
    for path in deid_folder(api.ctx.settings, UID).glob("*.dcm"):
        path.unlink()  # the de-identified copy gone: the rendered image is still served
    assert api.client.get(_url(found, run, preset="lung")).content == first
    r = api.client.get(_url(found, run, preset="bone"))  # never rendered: plainly missing
    assert r.status_code == 404 and "Traceback" not in r.text
    page = api.client.get(f"/studies/{found}").text  # the page says so, no broken images
    assert "no longer kept, so its key images cannot be shown" in page
    assert 'class="base"' not in page


def test_a_preset_must_be_known_and_suit_the_image_and_windows_it_the_overlay_above(
        job: tuple[Api, int, int]) -> None:
    api, found, run = job
    api.login(Role.RADIOLOGIST)
    for preset in ("", "nope", "../../etc", "x" * 33):
        r = api.client.get(_url(found, run, preset=preset))
        assert r.status_code in (400, 422), (preset, r.status_code)
        assert "Traceback" not in r.text
    r = api.client.get(_url(found, run, preset="auto"))  # an MR range, on a CT slice
    assert (r.status_code, r.text) == (400, "the auto preset does not suit a CT image\n")
    assert api.client.get(_url(found, run, index=0)).status_code == 404  # not a key slice
    assert api.client.get(_url(found, run + 1)).status_code == 404  # no such run
    assert api.client.get(_url(found + 99, run)).status_code == 404  # no such job
    grey = {p.name: np.asarray(_image(api.client.get(_url(found, run, preset=p.name)).content))
            for p in keyimages.CT_PRESETS}
    assert {g.shape for g in grey.values()} == {(512, 512)}
    # inside the skull: the brain window (0 to 80 HU) shows grey and white matter apart, the
    # bone window (-500 to 1300 HU) one flat grey, the lung window (-1350 to 150 HU) near white
    centre = (slice(200, 312), slice(200, 312))
    brain, bone, lung = (grey[p][centre] for p in ("brain", "bone", "lung"))
    assert brain.std() > 5 * bone.std() and 60 < bone.mean() < 90
    assert lung.mean() > 200
    overlay = _image(api.client.get(_url(found, run, layer="overlay.png", preset=None)).content)
    assert overlay.mode == "RGBA" and overlay.size == (512, 512)
    rgba = np.asarray(overlay)
    contour = (rgba[..., 3] == 255) & (rgba[..., 1] == 255) & (rgba[..., 0] == 0)
    assert contour[40:].sum() > 500  # the brain's green contour, below the banner
    assert (rgba[40:, :, 3] == 0).mean() > 0.9  # the rest is transparent: the slice shows
    assert tuple(rgba[2, 2]) == keyimages.BANNER_COLOUR  # the AI banner across the top


def test_mr_presets_range_over_the_slices_own_values_and_a_heatmap_is_see_through() -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # a real 64x64 MR slice
    values = np.asarray(ds.pixel_array, dtype=np.float64)
    assert keyimages.presets_for("MR") == keyimages.OTHER_PRESETS
    assert keyimages.window(values, keyimages.PRESETS["full"]) == (
        float(values[values > values.min()].min()), float(values.max()))
    auto = keyimages.window(values, keyimages.PRESETS["auto"])
    high = keyimages.window(values, keyimages.PRESETS["high-contrast"])
    assert auto[0] < high[0] < high[1] < auto[1]
    grey = {p.name: np.asarray(_image(keyimages.base_png(values, p)))
            for p in keyimages.OTHER_PRESETS}
    assert len({g.tobytes() for g in grey.values()}) == len(grey)  # four different pictures
    heat = np.zeros((64, 64))
    heat[20:40, 20:40] = 1.0
    rgba = np.asarray(_image(keyimages.overlay_png((64, 64), [], heat, "demo 1")))
    assert tuple(rgba[30, 30]) == (255, 0, 0, round(keyimages.HEAT_OPACITY * 255))
    assert rgba[50, 50, 3] == 0  # no heat: the slice shows through

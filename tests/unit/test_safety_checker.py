"""The safety checker runs the real open_nsfw model on images the tests draw.

The flagged picture is abstract: blurred purple and pink ellipses that the classifier scores above
0.9. It was found by a seeded hill-climb over ellipse parameters against this model, and is drawn
here from those parameters, so no real photograph is needed.
"""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFilter

from hidream_service.safety import SafetyChecker

# (x0, y0, x1, y1, r, g, b) per ellipse, on a dark red background, blurred by 7 px.
FLAGGED_ELLIPSES = [
    (102, 119, 169, 223, 130, 125, 211),
    (212, 30, 83, 194, 159, 135, 226),
    (57, 91, 172, 78, 125, 49, 232),
    (184, 187, 106, 183, 148, 110, 213),
    (27, 59, 42, 117, 242, 120, 239),
    (90, 223, 45, 89, 133, 93, 197),
    (0, 70, 62, 60, 158, 201, 188),
    (223, 52, 125, 58, 184, 246, 172),
]


def flagged_picture() -> Image.Image:
    image = Image.new("RGB", (224, 224), (62, 0, 22))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1, red, green, blue in FLAGGED_ELLIPSES:
        draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=(red, green, blue))
    return image.filter(ImageFilter.GaussianBlur(7))


@pytest.fixture(scope="module")
def checker() -> SafetyChecker:
    return SafetyChecker(threshold=0.5)


def test_plain_pictures_pass_untouched(checker: SafetyChecker) -> None:
    sky = Image.new("RGB", (256, 256), (40, 90, 200))
    noise = Image.effect_noise((256, 256), 60).convert("RGB")

    screened = checker.screen([sky, noise])

    assert screened.flagged == [False, False]
    assert screened.images[0] is sky and screened.images[1] is noise
    assert all(score < 0.1 for score in screened.scores)


def test_a_flagged_picture_is_replaced_with_black_of_the_same_size(checker: SafetyChecker) -> None:
    picture = flagged_picture().resize((320, 200))

    screened = checker.screen([Image.new("RGB", (64, 64), (40, 90, 200)), picture])

    assert screened.flagged == [False, True]
    assert screened.scores[1] >= 0.5
    black = screened.images[1]
    assert black.size == (320, 200)
    assert black.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_the_threshold_decides(checker: SafetyChecker) -> None:
    picture = flagged_picture()
    score = checker.scores([picture])[0]

    assert SafetyChecker(threshold=min(1.0, score + 0.01)).screen([picture]).flagged == [False]
    assert SafetyChecker(threshold=score).screen([picture]).flagged == [True]

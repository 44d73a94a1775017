"""Image-text pairs: render snippets to images, read them back with OCR, score the alignment.

The pair is (image, text). ``render_snippet`` draws a text or code snippet with Pillow in a
monospace font; ``ocr`` reads it back with Tesseract (through ``pytesseract``); the alignment
score is the character error rate ``cer`` between the OCR text and the source text:
Levenshtein distance (insertions + deletions + substitutions) divided by the source length, after
collapsing runs of whitespace on both sides (OCR cannot see indentation widths reliably).
The article's target is an alignment error below 0.2; ``align_pairs`` keeps the pairs under
``max_cer`` and rejects the rest with the reason.

Tesseract is a program, not a Python package: ``tesseract_available`` says whether it is installed,
and ``TESSERACT_HELP`` says how to install it. Taught in notebook 02.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dsnb.data import missing_extra

try:
    from PIL import Image, ImageDraw, ImageFont
except ModuleNotFoundError as exc:  # dsnb's 'data' extra
    raise missing_extra(exc) from exc

logger = logging.getLogger(__name__)

TESSERACT_HELP = (
    "The Tesseract OCR program is not installed, so the image-text section is skipped. Install it with "
    "`sudo apt-get install tesseract-ocr` (Debian/Ubuntu), `brew install tesseract` (macOS) or "
    "`conda install -c conda-forge tesseract`, then restart the kernel."
)
MONO_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/dejavu/DejaVuSansMono.ttf",
    "/Library/Fonts/Menlo.ttc",
    "C:/Windows/Fonts/consola.ttf",
)
_WS = re.compile(r"\s+")


class TesseractMissing(RuntimeError):
    """The tesseract binary is not on PATH; the message says how to install it."""


def tesseract_available() -> bool:
    """Whether the ``tesseract`` program can be run (notebook 02)."""
    if shutil.which("tesseract") is None:
        return False
    try:
        import pytesseract

        pytesseract.get_tesseract_version()
    except Exception:  # noqa: BLE001 - any failure to run it means "not usable"
        return False
    return True


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for path in MONO_FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    logger.info("no monospace TrueType font found; using Pillow's default font")
    return ImageFont.load_default(size=size)


def render_snippet(text: str, *, font_size: int = 20, margin: int = 16, scale: float = 1.0) -> Image.Image:
    """Draw ``text`` (several lines allowed) black on white in a monospace font (notebook 02).

    ``scale`` < 1 simulates a low-resolution scan: the image is shrunk by that factor and blown
    back up, blurring the glyphs (used to produce pairs the alignment check should reject).
    """
    if not text.strip():
        raise ValueError("render_snippet needs a non-empty text")
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=font, spacing=6)
    img = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), color=255)
    ImageDraw.Draw(img).multiline_text((margin - left, margin - top), text, fill=0, font=font, spacing=6)
    if scale < 1.0:
        small = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.BILINEAR)
        img = small.resize(img.size, Image.BILINEAR)
    return img


def ocr(image: Image.Image, *, psm: int = 6) -> str:
    """Text read from ``image`` by Tesseract (``--psm 6``: one uniform block of text)."""
    try:
        import pytesseract
    except ModuleNotFoundError as exc:  # dsnb's 'data' extra
        raise missing_extra(exc) from exc
    if not tesseract_available():
        raise TesseractMissing(TESSERACT_HELP)

    return pytesseract.image_to_string(image, config=f"--psm {psm}")


def normalize_ws(text: str) -> str:
    """Runs of whitespace collapsed to one space, stripped."""
    return _WS.sub(" ", text).strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute, each cost 1) between two strings, in O(len(a)*len(b)).

    The algorithm notebook 02 teaches, kept as a reference: the tests check it equals
    ``nltk.edit_distance``, which ``cer`` uses.
    """
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of ``hypothesis`` against ``reference`` (whitespace runs collapsed).

    0 is a perfect read; it can exceed 1 when the hypothesis has much extra text.
    """
    try:
        from nltk.metrics.distance import edit_distance
    except ModuleNotFoundError as exc:  # dsnb's 'data' extra
        raise missing_extra(exc) from exc

    ref, hyp = normalize_ws(reference), normalize_ws(hypothesis)
    if not ref:
        raise ValueError("cer needs a non-empty reference text")
    return edit_distance(ref, hyp) / len(ref)


@dataclass(frozen=True)
class PairScore:
    """One image-text pair: the source text, what OCR read, the CER and the keep/reject decision."""

    text: str
    ocr_text: str
    cer: float
    kept: bool
    reason: str


def score_pair(text: str, image: Image.Image, *, max_cer: float = 0.2) -> PairScore:
    """OCR ``image`` and compare with ``text``; keep the pair if CER < ``max_cer`` (notebook 02)."""
    read = ocr(image)
    if not read.strip():
        return PairScore(text, read, 1.0, False, "OCR read no text")
    err = cer(text, read)
    if err >= max_cer:
        return PairScore(text, read, err, False, f"CER {err:.2f} >= {max_cer}")
    return PairScore(text, read, err, True, "kept")


def align_pairs(
    texts: list[str], *, max_cer: float = 0.2, font_size: int = 20, scales: list[float] | None = None
) -> list[PairScore]:
    """Render each text, OCR it back and score it (notebook 02). Raises ``TesseractMissing`` if absent.

    ``scales`` (one per text, default 1.0) degrade chosen images, see ``render_snippet``.
    """
    if not tesseract_available():
        raise TesseractMissing(TESSERACT_HELP)
    scales = scales or [1.0] * len(texts)
    out = []
    for t, scale in zip(texts, scales, strict=True):
        if not t.strip():
            out.append(PairScore(t, "", 1.0, False, "empty text"))
            continue
        out.append(score_pair(t, render_snippet(t, font_size=font_size, scale=scale), max_cer=max_cer))
    kept = sum(p.kept for p in out)
    logger.info("image-text: %d pairs, %d kept, %d rejected", len(out), kept, len(out) - kept)
    return out


def snippets_for_ocr(texts: list[str], n: int, *, max_lines: int = 3, max_width: int = 70, seed: int = 0) -> list[str]:
    """A seeded sample of ``n`` short snippets (first lines of texts, at most ``max_width`` wide)."""
    import random

    pool = []
    for t in texts:
        lines = [ln.rstrip() for ln in t.strip().splitlines()[:max_lines] if ln.strip()]
        if lines and all(len(ln) <= max_width for ln in lines):
            pool.append("\n".join(lines))
    rng = random.Random(seed)
    return rng.sample(pool, min(n, len(pool)))

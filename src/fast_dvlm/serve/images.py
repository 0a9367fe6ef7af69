"""`image_url` -> PIL image, without ever touching the network or a file the operator did not allow.

Accepted: `data:image/...;base64,...` URLs, and local paths (`/x.png` or `file:///x.png`) that resolve
(symlinks followed) inside one of the `--allow-path` folders. The pixel count is read from the header
and checked before any pixel is decoded, so an oversized image costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from ..prompt import image_error
from .errors import APIError


class ImagePolicy:
    def __init__(self, allowed_dirs: Sequence[str | Path], max_pixels: int) -> None:
        self.allowed_dirs = tuple(Path(d).resolve() for d in allowed_dirs)
        self.max_pixels = max_pixels

    def open(self, url: str, param: str) -> Image.Image:
        """The RGB image `url` names; APIError (400/403) for anything else."""
        scheme = urlsplit(url).scheme.lower()
        if scheme == "data":
            return self._decode(io.BytesIO(data_url_bytes(url, param)), param)
        if scheme in ("http", "https"):
            raise APIError(
                400,
                "images are never fetched from the network: send the image inline as a data: URL",
                "image_url_not_allowed",
                param,
            )
        if scheme not in ("", "file"):
            raise APIError(400, f"unsupported image URL scheme {scheme!r}", "image_url_not_allowed", param)
        return self._decode(self._allowed_file(unquote(urlsplit(url).path) if scheme else url, param), param)

    def _allowed_file(self, path: str, param: str) -> Path:
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(d) for d in self.allowed_dirs):
            hint = (
                "the server allows no local files"
                if not self.allowed_dirs
                else "it is outside the allowed folders"
            )
            raise APIError(403, f"image path {path!r} is not allowed: {hint}", "path_not_allowed", param)
        if not resolved.is_file():
            raise APIError(400, f"image file not found: {path}", "image_not_found", param)
        return resolved

    def _decode(self, source: io.BytesIO | Path, param: str) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(source) as image:
                    self._check_size(image, param)
                    image.verify()  # a truncated file fails here even where a library (lmms-eval does)
                    # has set PIL's global LOAD_TRUNCATED_IMAGES, which makes load() pad it silently
                if isinstance(source, io.BytesIO):
                    source.seek(0)
                with Image.open(source) as image:
                    image.load()
                    return image.convert("RGB")
        except APIError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise APIError(400, "the image has too many pixels", "image_too_large", param) from None
        except Exception as exc:  # decoders fail on malformed bytes in many ways; all mean a bad image
            reason = f"cannot read the image: {image_error(exc)}"
            raise APIError(400, reason, "invalid_image", param) from None

    def _check_size(self, image: Image.Image, param: str) -> None:
        width, height = image.size
        if width * height > self.max_pixels:
            raise APIError(
                400,
                f"the image is {width}x{height} = {width * height} pixels; this server accepts at most "
                f"{self.max_pixels}",
                "image_too_large",
                param,
            )


def data_url_bytes(url: str, param: str) -> bytes:
    """The payload of `data:image/<kind>;base64,<payload>`."""
    header, comma, payload = url.partition(",")
    media_type, *flags = header.removeprefix("data:").split(";")
    if not comma or "base64" not in flags:
        raise APIError(
            400, "a data URL must be of the form data:image/<kind>;base64,<data>", "invalid_image", param
        )
    if not media_type.lower().startswith("image/"):
        raise APIError(
            400, f"the data URL holds {media_type or 'no media type'!r}, not an image", "invalid_image", param
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the data URL's payload is not valid base64", "invalid_image", param) from None

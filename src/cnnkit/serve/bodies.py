"""Request bodies: the images of a request (multipart, JSON base64 or one raw image) decoded into one uint8
batch for a model, within the service's limits (count, pixels, form fields), and the request's other fields
(`topk`, `method`, ...) read from the body or the query."""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import io
import json
import os
from typing import Any

import torch
from fastapi import Request

from cnnkit.errors import DataError, error_line
from cnnkit.serve.models import ServedModel
from cnnkit.serve.options import ServeOptions
from cnnkit.serve.problems import Problem


async def read_images(request: Request, m: ServedModel, options: ServeOptions, single: bool = False
                      ) -> tuple[torch.Tensor, list[str], dict[str, Any], list[tuple[int, int]]]:
    """The request's images as one uint8 N×C×H×W batch for `m`, their names, the other fields given
    (JSON keys or multipart form fields) and each image's own (height, width). Multipart: one or more file
    parts (any field name). JSON: {"images": [base64, ...]} or {"image": base64}, optionally as data URLs. A
    body of type image/* (or application/octet-stream): that one image, its options as query parameters."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any] = {}
    blobs: list[tuple[str, bytes]] = []
    if ctype == "multipart/form-data":
        fields, blobs = parse_multipart(await request.body(), request.headers.get("content-type", ""),
                                        options.max_images, max_fields=32)
    elif ctype == "application/json":
        fields, blobs = json_images(await request.body())
    elif ctype.startswith("image/") or ctype == "application/octet-stream":  # one image as the raw body
        blobs.append(("body", await request.body()))
    else:
        raise Problem(415, f"send the images as multipart/form-data, application/json (base64) or one image "
                           f"as the body (image/*), not {ctype or 'a body without Content-Type'}")
    if not blobs:
        raise Problem(422, "no image in the request")
    if single and len(blobs) > 1:
        raise Problem(422, f"explain takes one image per request, got {len(blobs)}")
    if len(blobs) > options.max_images:
        raise Problem(413, f"{len(blobs)} images in one request; at most {options.max_images}")
    # a large image (up to --max-pixels) takes tens to hundreds of milliseconds to decode, and health checks and
    # every other request would wait for it on the event loop: it is decoded in a pool thread (PIL releases the
    # GIL while it decodes). Small ones are decoded here: a 28×28 PNG decodes in less time than the hand-over
    # to a thread and back takes under load
    opened = _open_if_small(blobs)
    if opened is not None:
        x, sizes = decode_images(blobs, m, options.max_pixels, opened)
    else:
        x, sizes = await asyncio.get_running_loop().run_in_executor(decode_pool(), decode_images, blobs, m,
                                                                    options.max_pixels)
    return x, [n for n, _ in blobs], fields, sizes


def json_images(raw: bytes) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The fields and the images of a JSON body: {"images": [base64, ...]} or {"image": base64}."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: arrays nested deeper than Python's stack
        raise Problem(400, f"the body is not valid JSON: {error_line(e)}") from None
    if not isinstance(body, dict):
        raise Problem(422, 'the JSON body must be an object, e.g. {"images": ["<base64>"]}')
    images = body.pop("images", None)
    if images is None and "image" in body:
        images = [body.pop("image")]
    if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
        raise Problem(422, 'give "images": a list of base64 strings (or "image": one)')
    return body, [(f"image {i}", _b64(s, i)) for i, s in enumerate(images)]


INLINE_DECODE_PIXELS = 64 * 64  # all images of a request together, as their headers declare them


def _open_if_small(blobs: list[tuple[str, bytes]]) -> list[Any] | None:
    """The images opened by PIL (headers read, nothing decoded) when together they declare at most
    INLINE_DECODE_PIXELS pixels; None otherwise, or when a header cannot be read (the pool's decode then says
    what is wrong)."""
    import warnings

    from PIL import Image

    opened, total = [], 0
    for _, data in blobs:
        try:
            with warnings.catch_warnings():  # a huge claim: decode_images refuses it with its own message
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
        except Exception:  # any header PIL cannot read
            im = None
        if im is not None:
            opened.append(im)
            total += im.width * im.height
        if im is None or total > INLINE_DECODE_PIXELS:
            for o in opened:
                o.close()
            return None
    return opened


def parse_multipart(body: bytes, content_type: str, max_files: int,
                    max_fields: int) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """The form fields and the file parts (file name or field name, bytes) of a multipart/form-data body that
    is already in memory (the Guard middleware buffered it, bounded). python-multipart's parser, driven
    directly: Starlette's `request.form()` around it spools every part through an UploadFile and cost four
    times as much per small request; a part is a file when its Content-Disposition has a filename, as there."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise Problem(400, "cannot read the multipart body: its Content-Type has no boundary")
    parts: list[tuple[dict[bytes, bytes], bytes]] = []
    headers: dict[bytes, bytes] = {}
    field, value, data = bytearray(), bytearray(), bytearray()

    def header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear(), value.clear()

    def part_end() -> None:
        parts.append((dict(headers), bytes(data)))
        headers.clear(), data.clear()
        if len(parts) > max_files + max_fields:
            raise Problem(413, f"more than {max_files} images in one request")

    parser = MultipartParser(boundary, {
        "on_header_field": lambda d, a, b: field.extend(d[a:b]),
        "on_header_value": lambda d, a, b: value.extend(d[a:b]),
        "on_header_end": header_end, "on_part_data": lambda d, a, b: data.extend(d[a:b]), "on_part_end": part_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise Problem(400, f"cannot read the multipart body: {error_line(e)}") from None
    fields: dict[str, str] = {}
    blobs: list[tuple[str, bytes]] = []
    for part_headers, content in parts:
        params = parse_options_header(part_headers.get(b"content-disposition", b""))[1]
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in params:
            blobs.append((params[b"filename"].decode("utf-8", "replace") or name, content))
        else:
            fields[name] = content.decode("utf-8", "replace")
    if len(blobs) > max_files:
        raise Problem(413, f"more than {max_files} images in one request")
    if len(fields) > max_fields:
        raise Problem(413, f"more than {max_fields} form fields in one request")
    return fields, blobs


_DECODE_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def decode_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that decode images and encode masks off the event loop (made on first use)."""
    global _DECODE_POOL
    if _DECODE_POOL is None:
        _DECODE_POOL = concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)),
                                                             thread_name_prefix="cnnkit-decode")
    return _DECODE_POOL


def _b64(s: str, i: int) -> bytes:
    if s.startswith("data:"):
        s = s.partition(",")[2]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(422, f"image {i} is not valid base64") from None


def decode_images(blobs: list[tuple[str, bytes]], m: ServedModel, max_pixels: int,
                  opened: list[Any] | None = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The images as one uint8 batch for `m` (a segmentation or detection model's stretched whole to its input
    size, so that masks and boxes map back to the image; a classifier's resized and centre-cropped) and each
    image's own (height, width); `opened`: the same images already opened by PIL."""
    from cnnkit.data.images import ImageTooLarge, load_image_file, to_model_input
    from cnnkit.evaluate.masks import model_input

    out, sizes = [], []
    for i, (name, data) in enumerate(blobs):
        if not data:
            raise Problem(422, f"{name} is empty (0 bytes)")
        try:
            image = load_image_file(opened[i] if opened else io.BytesIO(data), max_pixels=max_pixels, name=name)
            if m.restores:  # at its own size: restored as it is, within the bound on what a restoration writes
                out.append(restoration_input(image, m, name))
            else:
                convert = model_input if m.stretched else to_model_input
                out.append(convert(image, m.input_shape[0], m.input_shape[1:]))
            sizes.append((image.height, image.width))
        except ImageTooLarge as e:
            raise Problem(413, _too_many_pixels(name, e, max_pixels) if e.limit else str(e)) from None
        except DataError as e:
            msg = str(e)
            raise Problem(415 if "not an image format" in msg else 422, msg) from None
        except MemoryError:
            raise Problem(413, f"{name} is too large to convert for the model; send a smaller image") from None
        except (ValueError, OSError, TypeError, RuntimeError) as e:  # a mode the conversion does not know (LAB)
            raise Problem(422, f"cannot convert image {name} for the model: {error_line(e)}") from None
    return out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out), sizes


def restoration_input(image: Any, m: ServedModel, name: str) -> torch.Tensor:
    """An image for a restoration model: uint8 C×h×w at its own size (`restoration_pixels`); 413 when its
    restoration would be larger than cnnkit writes (`cnnkit.evaluate.restore.MAX_OUTPUT_PIXELS`)."""
    from cnnkit.evaluate.restore import MAX_OUTPUT_PIXELS, restoration_pixels

    s = m.card["restoration"]["scale"]
    if image.height * image.width * s * s > MAX_OUTPUT_PIXELS:
        raise Problem(413, f"{name}: restored at ×{s} it would be {image.width * s}×{image.height * s} pixels, more "
                           f"than {MAX_OUTPUT_PIXELS // 1_000_000} Mpixels; send a smaller image")
    return restoration_pixels(image, m.input_shape[0])


def _too_many_pixels(name: str, e: Any, max_pixels: int) -> str:
    """The 413 for an image past the pixel limit (an ImageTooLarge), naming the service's --max-pixels."""
    from PIL import Image

    if e.size:
        return (f"{name} has {e.size[0]}×{e.size[1]} pixels, more than --max-pixels {max_pixels} allows; send a "
                f"smaller image")
    refused = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # PIL refuses from the header past twice its warning limit
    if refused and max_pixels > refused:
        return f"{name} has more than {refused} pixels, more than the image decoder takes; send a smaller image"
    return f"{name} has more pixels than --max-pixels {max_pixels} allows; send a smaller image"


def int_field(fields: dict[str, Any], request: Request, key: str, default: int, low: int, high: int) -> int:
    """Field `key` (from `fields`, else the query), an integer from `low` to `high`; 422 otherwise."""
    raw = fields.get(key, request.query_params.get(key, default))
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise Problem(422, f"{key} must be an integer, got {str(raw)[:40]!r}") from None
    if not low <= value <= high:
        raise Problem(422, f"{key} must be between {low} and {high}, got {value}")
    return value


def str_field(fields: dict[str, Any], request: Request, key: str, default: str | None) -> str | None:
    """Field `key` (from `fields`, else the query) as a string; 422 for a JSON list or object."""
    value = fields.get(key, request.query_params.get(key, default))
    if value is not None and not isinstance(value, (str, int)):
        raise Problem(422, f"{key} must be a string")
    return None if value is None else str(value)

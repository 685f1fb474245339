"""A small client of `cnnkit serve` (httpx), used by `cnnkit predict --url` and `cnnkit explain --url`.

    from cnnkit.serve.client import Client
    c = Client("http://127.0.0.1:8000/v1/models/resnet9")        # or Client("http://127.0.0.1:8000", "resnet9");
                                                                  # Client("http://127.0.0.1:8000"): its one model
    c.predict(["shoe.png"], topk=3)       # -> [{"image": ..., "top": [{"class", "index", "probability"}]}]
                                          # a segmentation model: also "mask" (palette PNG, base64), "areas",
                                          # "height", "width"; "top" holds {"class", "area"}; a detection
                                          # model: "height", "width", "top" holds {"class", "score", "box"}
    c.restore("small.png")                # a restoration model: the restored image, PNG bytes
    c.explain("shoe.png", method="gradcam", target="Sandal")      # -> maps, overlay PNG (base64)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cnnkit.errors import CnnkitError, ConfigError, error_line


class ServiceError(CnnkitError):
    """The service answered with an error (its status and message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


_URL = re.compile(r"^(https?://[^/]+)(?:/v1/models/([^/]+))?/?$")


class Client:
    """Talks to one service; `model` is taken from a `.../v1/models/NAME` URL when not given, else, with only
    the host's address, it is the one model the service serves."""

    def __init__(self, url: str, model: str | None = None, token: str | None = None, timeout: float = 60.0):
        m = _URL.match(url.strip())
        if not m:
            raise ConfigError(f"--url must look like http://HOST:PORT/v1/models/NAME (or http://HOST:PORT), got "
                              f"{url!r}")
        import httpx

        # a name in the URL as `cnnkit serve` prints it: percent-encoded
        self.base, self.model = m.group(1), model or (unquote(m.group(2)) if m.group(2) else None)
        token = token if token is not None else os.environ.get("CNNKIT_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, image: bool = False, **kw) -> Any:
        """The service's JSON answer (`image`: the PNG it answers, as bytes); ServiceError for an error."""
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ServiceError(f"cannot reach the service at {self.base}: {error_line(e)}") from None
        if image and r.status_code < 400:
            if r.headers.get("content-type", "").split(";")[0] != "image/png":
                raise ServiceError(f"the service at {self.base} did not answer a PNG (is the model a restoration "
                                   f"model?)")
            return r.content
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            msg = body["error"]["message"] if isinstance(body, dict) and "error" in body else r.text[:200]
            raise ServiceError(f"the service answered {r.status_code}: {msg}", r.status_code)
        if body is None:
            raise ServiceError(f"the service at {self.base} did not answer JSON (is it cnnkit serve?)")
        return body

    def _name(self) -> str:
        """The model asked, as a URL's path holds it: the URL's, else the one the service serves (with several, a
        ConfigError names their URLs)."""
        if not self.model:
            names = [m["name"] for m in self.models()]
            if len(names) != 1:
                served = ", ".join(f"{self.base}/v1/models/{quote(n, safe='')}" for n in names) or "none"
                raise ConfigError(f"{self.base} serves {len(names)} models: say which, with a URL ending in "
                                  f"/v1/models/NAME ({served})")
            self.model = names[0]
        return quote(self.model, safe="")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/readyz")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the service answers /readyz with 200 (models loaded and warmed); ServiceError after
        `timeout` seconds."""
        import time

        end = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except ServiceError:
                if time.monotonic() > end:
                    raise ServiceError(f"the service at {self.base} was not ready within {timeout:g} s") from None
            time.sleep(0.05)

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models")["models"]

    def card(self) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{self._name()}")

    def predict(self, images: list[str | os.PathLike], topk: int = 5) -> list[dict[str, Any]]:
        """Top-k classes of image files, in one request (a segmentation model's: each image's mask and areas
        too, `cnnkit.evaluate.masks.read_mask_png` decodes the mask; a detection model's: every detection over
        the service's score threshold, boxes in the image's pixels, whatever `topk`)."""
        files = [("file", (Path(p).name, Path(p).read_bytes())) for p in images]
        return self._call("POST", f"/v1/models/{self._name()}/predict", params={"topk": topk},
                          files=files)["predictions"]

    def restore(self, image: str | os.PathLike) -> bytes:
        """A restoration model's restoration of an image file: the PNG the service answers."""
        p = Path(image)
        return self._call("POST", f"/v1/models/{self._name()}/predict", image=True,
                          files=[("file", (p.name, p.read_bytes()))])

    def explain(self, image: str | os.PathLike, method: str = "gradcam", target: str | int | None = None,
                layer: str = "auto") -> dict[str, Any]:
        """One image's explanation: maps at the input's and the layer's resolution and a PNG overlay (base64)."""
        params = {"method": method, "layer": layer, **({"target": str(target)} if target is not None else {})}
        p = Path(image)
        return self._call("POST", f"/v1/models/{self._name()}/explain", params=params,
                          files=[("file", (p.name, p.read_bytes()))])

"""A local web server for the OHIF viewer tests: the OHIF dist, its config, a DICOMweb proxy.

OHIF v3 (the ``dist/`` of the npm package ``@ohif/app``) must be served at the
root of its own origin: it loads its bundles from ``/`` and its client-side
routes (``/viewer``, ``/segmentation``...) need ``index.html`` as a fallback.
Its data source talks DICOMweb to the same origin under ``/dicom-web``, which
this server forwards, streamed, to Orthanc's DICOMweb plugin. ``/app-config.js``
is generated: one dicomweb data source, no external URL, nothing that phones home.

Everything listens on 127.0.0.1 on a free port and is stopped by the test.
"""
from __future__ import annotations

import http.client
import json
import logging
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.peers import free_port, require_binary

LOGGER = logging.getLogger(__name__)

#: The installed OHIF dist (``tests/viewer/install.sh``).
OHIF_DIST = Path(__file__).resolve().parent / "viewer" / "ohif"
#: Headers that belong to one connection and are never forwarded by a proxy (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade",
})
#: Cross-origin isolation lets cornerstone3D use SharedArrayBuffer; all resources are same-origin.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {
    ".js": "application/javascript", ".mjs": "application/javascript", ".wasm": "application/wasm",
    ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml",
    ".woff2": "font/woff2", ".html": "text/html; charset=utf-8", ".ico": "image/x-icon",
    ".png": "image/png",
}
CHUNK = 64 * 1024


#: Debian's Chromium, the browser of every headless-Chromium test.
CHROMIUM = "/usr/bin/chromium"
#: The npm package of the browser tests (tests/viewer/install.sh).
VIEWER_DIR = Path(__file__).resolve().parent / "viewer"


def require_browser_tools() -> str:
    """Debian's Chromium, Node.js and playwright-core; fails the test (never skips)
    when one is missing.

    Returns
    -------
    str
        The ``node`` executable that runs the ``tests/viewer/*.mjs`` scripts.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (see .ci/run)")
    node = require_binary("node")
    if not (VIEWER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        pytest.fail("playwright-core not installed: run tests/viewer/install.sh")
    return node


def require_ohif_dist() -> Path:
    """The OHIF dist folder; fails the test (never skips) when it is not installed."""
    if not (OHIF_DIST / "index.html").is_file() or not (OHIF_DIST / ".version").is_file():
        pytest.fail(f"OHIF dist not installed in {OHIF_DIST}: run tests/viewer/install.sh")
    return OHIF_DIST


#: OHIF 3.13 (``_checkIfCanAddMeasurementsToDisplaySet`` in extensions/cornerstone-dicom-sr,
#: getSopClassHandlerModule.ts) walks an SR's measurements from the last to the first and
#: reads ``measurement.coords[0].ReferencedSOPSequence`` unguarded: a measurement group
#: without SCOORD (TID 1501, or TID 1411 referencing a SEG segment) has ``coords: []``,
#: the loop throws and the groups before it, measurement 0 included, are never attached
#: to their image, so the SR viewport stays black. OHIF's own customization hook
#: ``onBeforeSRAddMeasurement`` hands that loop a copy with one empty coordinate, which
#: it skips ("no ReferencedSOPSequence"). The SR itself is unchanged. See docs/viewers.md.
SR_NON_GEOMETRIC_WORKAROUND = """\
window.config.customizationService = [{
  onBeforeSRAddMeasurement: {
    $set: ({ measurement }) =>
      measurement.coords && measurement.coords.length
        ? measurement
        : Object.assign({}, measurement, { coords: [{}] }),
  },
}];
"""


def ohif_app_config(dicomweb_root: str = "/dicom-web", sr_workaround: bool = True) -> str:
    """``app-config.js`` for OHIF v3: one dicomweb data source on this origin.

    Parameters
    ----------
    dicomweb_root: str
        Path of the DICOMweb service on the viewer's origin (QIDO-RS, WADO-RS
        and WADO-URI all go there: Orthanc's plugin serves the three).
    sr_workaround: bool
        Add :data:`SR_NON_GEOMETRIC_WORKAROUND` (default); ``False`` gives the
        stock behaviour, to show the bug.

    Returns
    -------
    str
        JavaScript that sets ``window.config``.
    """
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "Orthanc DICOMweb (deepsc-node test PACS)",
            "name": "orthanc",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config: dict[str, Any] = {
        "name": "deepsc-node viewer tests",
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "showErrorDetails": "always",
        "defaultDataSourceName": "dicomweb",
        "dataSources": [data_source],
    }
    return (
        "/** Generated by tests/viewer_server.py: OHIF talks DICOMweb to this origin only. */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        + (SR_NON_GEOMETRIC_WORKAROUND if sr_workaround else "")
    )


class ViewerServer:
    """OHIF dist + ``/app-config.js`` + ``/dicom-web/`` proxy, on 127.0.0.1.

    Parameters
    ----------
    upstream_port: int
        HTTP port of Orthanc (DICOMweb plugin under ``/dicom-web/``) on 127.0.0.1.
    dist: Path | None
        The OHIF dist folder (default: the installed one).
    sr_workaround: bool
        Serve the OHIF 3.13 SR workaround in ``app-config.js`` (default).
    """

    def __init__(
        self, upstream_port: int, dist: Path | None = None, sr_workaround: bool = True
    ) -> None:
        self.dist = Path(dist) if dist is not None else require_ohif_dist()
        self.upstream_port = upstream_port
        self.port = free_port()
        self.app_config = ohif_app_config(sr_workaround=sr_workaround).encode()
        self.proxied: list[tuple[str, int]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Origin of the viewer."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ViewerServer:
        """Serve in a background thread."""
        handler = type("Handler", (_Handler,), {"viewer": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ohif-viewer-server", daemon=True
        )
        self._thread.start()
        LOGGER.info("OHIF viewer on %s, DICOMweb proxied to port %d", self.url, self.upstream_port)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    """Static files with an ``index.html`` fallback, the config, and the proxy."""

    viewer: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOGGER.debug("viewer %s - %s", self.address_string(), format % args)

    # -- dispatch --------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch(head=False)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch(head=True)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self._path().startswith("/dicom-web/"):
            self._proxy()
        else:
            self._send_bytes(405, b"method not allowed\n", "text/plain", head=False)

    def _path(self) -> str:
        return unquote(urlsplit(self.path).path)

    def _dispatch(self, head: bool) -> None:
        path = self._path()
        if path == "/dicom-web" or path.startswith("/dicom-web/"):
            self._proxy()
        elif path == "/app-config.js":
            self._send_bytes(200, self.viewer.app_config, CONTENT_TYPES[".js"], head)
        else:
            self._static(path, head)

    # -- static ----------------------------------------------------------
    def _static(self, path: str, head: bool) -> None:
        root = self.viewer.dist.resolve()
        target = (root / path.lstrip("/")).resolve()
        if root != target and root not in target.parents:
            self._send_bytes(404, b"not found\n", "text/plain", head)
            return
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            if Path(path).suffix and Path(path).suffix != ".html":
                # A missing asset is a 404, not the app shell.
                self._send_bytes(404, b"not found\n", "text/plain", head)
                return
            target = root / "index.html"  # client-side route: /viewer, /segmentation...
        content_type = CONTENT_TYPES.get(target.suffix) or (
            mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        )
        self._send_bytes(200, target.read_bytes(), content_type, head)

    def _send_bytes(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    # -- proxy -----------------------------------------------------------
    def _proxy(self) -> None:
        """Forward the request to Orthanc and stream the answer back."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            name: value for name, value in self.headers.items()
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
        }
        # Orthanc builds BulkDataURIs from Host: keep the viewer's origin in them.
        headers["Host"] = self.headers.get("Host", f"127.0.0.1:{self.viewer.port}")
        headers["Forwarded"] = f"host={headers['Host']};proto=http"
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", self.viewer.upstream_port, timeout=300)
        answered = False
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            self.viewer.proxied.append((self.path, response.status))
            self.send_response(response.status, response.reason)
            answered = True
            known_length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            for name, value in ISOLATION_HEADERS.items():
                self.send_header(name, value)
            chunked = known_length is None and self.command != "HEAD"
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            while True:
                data = response.read1(CHUNK) if chunked else response.read(CHUNK)
                if not data:
                    break
                if chunked:
                    self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
                else:
                    self.wfile.write(data)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException) as exc:
            LOGGER.warning("DICOMweb proxy %s %s failed: %s", self.command, self.path, exc)
            if not answered:
                self.viewer.proxied.append((self.path, 502))
                self._send_bytes(502, f"proxy error: {exc}\n".encode(), "text/plain", head=False)
            self.close_connection = True
        finally:
            upstream.close()

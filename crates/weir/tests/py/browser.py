"""Headless Chromium for weir's web console tests, driven by Selenium.

Uses Debian's chromium and chromium-driver packages. The driver path is always given
explicitly, so Selenium Manager is never consulted and nothing is downloaded.

Environment:
    WEIR_TEST_CHROMIUM        browser binary (default /usr/bin/chromium)
    WEIR_TEST_CHROMEDRIVER    driver binary (default /usr/bin/chromedriver)
"""

import os
import shutil
import struct
import tempfile
import zlib

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

# --no-sandbox: Chromium refuses to start as root with its sandbox on.
# --disable-dev-shm-usage: keep shared memory in /tmp, so a small /dev/shm (containers) can't
#   crash the renderer.
# --disable-gpu: no GPU here; skips probing for one.
# The rest cut down the browser's own calls to Google services, which the closed network
# refuses anyway. ChromeDriver merges this --disable-features with its own list.
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--disable-features=AutofillServerCommunication,NetworkTimeServiceQuerying,"
    "OptimizationHints,Translate,MediaRouter",
)


def start_browser(width=1280, height=800):
    """Starts headless Chromium with a fresh profile; the page viewport is width x height.

    Browser console messages of every level are kept for console_errors(). Call
    driver.quit() when done; the temporary profile is removed then.
    """
    profile = tempfile.mkdtemp(prefix="weir-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("WEIR_TEST_CHROMIUM", "/usr/bin/chromium")
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=os.environ.get("WEIR_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
    )
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise

    quit_driver = driver.quit

    def quit_and_clean():
        try:
            quit_driver()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    try:
        set_viewport(driver, width, height)
    except BaseException:
        driver.quit()
        raise
    return driver


def set_viewport(driver, width, height):
    """Resizes the window so the page itself (innerWidth x innerHeight) is width x height.

    Headless Chromium still counts a toolbar's height in the window size (143 px with
    Chromium 156), so set_window_size(390, 844) alone gives a 390 x 701 page.
    """
    driver.set_window_size(width, height)
    inner_w, inner_h = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    if (inner_w, inner_h) != (width, height):
        driver.set_window_size(2 * width - inner_w, 2 * height - inner_h)


def console_errors(driver):
    """The SEVERE browser log messages since the last call (reading the log empties it).

    These include console.error() calls, uncaught exceptions and unhandled promise
    rejections, and failed resource loads (any 4xx/5xx, favicon.ico included).
    """
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def png_size_and_colors(path):
    """(width, height, number of distinct pixel values) of an 8-bit, non-interlaced PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    if depth != 8 or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced PNGs are handled")
    raw = zlib.decompress(b"".join(idat))
    bpp, stride = channels, width * channels
    prev = bytearray(stride)
    colors = set()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        elif kind != 0:
            raise ValueError(f"{path}: bad PNG filter {kind} on row {y}")
        colors.update(bytes(line[i : i + bpp]) for i in range(0, stride, bpp))
        prev = line
    return width, height, len(colors)


def assert_png_not_blank(path, min_colors=2):
    """Fails unless the PNG at path has at least min_colors distinct pixel values."""
    width, height, colors = png_size_and_colors(path)
    assert colors >= min_colors, f"{path}: {width}x{height} PNG has only {colors} color(s)"
    return width, height, colors

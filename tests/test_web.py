"""The web demo (`c3llm serve`) as its users meet it: one real server process on the tiny model, driven by a real
browser (Debian's chromium through Playwright, installed with apt on first use) and by 20-request batches through
gradio_client; its file routes, caps and clean shutdown checked from outside.

The tests of this module share the server and run in file order: the last one stops it.
Screenshots and the load figures go to $C3LLM_TEST_ARTIFACTS/web (default: outputs/test-artifacts/web).
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

from c3llm.web.app import task_title
from processing_c3llm.processing_c3llm import TASKS
from processing_c3llm.media_c3llm import write_mp4

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("C3LLM_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts")) / "web"
# The flags the machine notes give for headless chromium as root on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
LOCAL_HOSTS = ("127.0.0.1", "localhost")
MAX_UPLOAD_MB, MAX_INPUT_SECONDS, MAX_SECONDS = 1, 3, 4  # the server's caps in these tests


def chromium() -> str:
    """Debian's chromium, installed with apt-get on first use (as the parity tests build their venv)."""
    found = shutil.which("chromium")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):  # fmt: skip
        done = subprocess.run(sudo + command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            pytest.fail(f"installing Debian's chromium failed ({' '.join(sudo + command)}):\n{done.stderr[-2000:]}")
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def server(tiny_folder, tmp_path_factory):
    """`c3llm serve` on the tiny model in a subprocess whose TMPDIR and working folder are empty folders of the test."""
    base = tmp_path_factory.mktemp("web")
    tmp, cwd = base / "tmp", base / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    port = free_port()
    log = (base / "server.log").open("w")
    env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "c3llm", "serve", "--model", str(tiny_folder), "--port", str(port),
         "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-input-seconds", str(MAX_INPUT_SECONDS),
         "--max-seconds", str(MAX_SECONDS)],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{(base / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not answer within 180 s:\n{(base / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    info = {"url": url, "process": process, "tmp": tmp, "cwd": cwd, "log": base / "server.log", "model": tiny_folder}
    yield info
    if process.poll() is None:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-inputs")
    frames = np.zeros((20, 48, 48, 3), dtype=np.uint8)  # 2 s at 10 fps: a square moving right, H.264 as browsers play
    for i, frame in enumerate(frames):
        frame[16:32, 2 * i : 2 * i + 16] = 255
    write_mp4(folder / "clip.mp4", frames, 10)
    t = np.arange(48000) / 48000
    sf.write(folder / "tone.wav", np.stack([0.4 * np.sin(2 * np.pi * 440 * t)] * 2, axis=1), 48000)
    (folder / "corrupt.mp4").write_bytes(os.urandom(4000))
    sf.write(folder / "silent.wav", np.zeros(24000, dtype=np.float32), 24000)
    sf.write(folder / "long.wav", 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 5) / 16000), 16000)  # 5 s > cap
    return folder


# ---- the runner, in-process ------------------------------------------------------------------------------------------
def test_runner_seeds_candidates_video_and_cancel(tiny, inputs, tmp_path):
    import threading

    from c3llm.web.runner import Cancelled, Request, RequestError, Runner

    model, processor = tiny
    runner = Runner(model, processor, tmp_path / "work")
    asked = Request("text-to-audio", text="a chirp", seconds=0.6, seed=5, candidates=3)
    result = runner.run(asked)
    assert result.seed == 5 and len(result.audio) == 3 and result.spectrogram.stat().st_size > 0
    waves = [sf.read(path, dtype="int16")[0] for path in result.audio]
    assert all(len(w) == round(0.6 * model.config.sampling_rate) for w in waves)
    assert not np.array_equal(waves[0], waves[1]), "candidates of one request are different samples"
    again = runner.run(asked)
    assert all(np.array_equal(a, sf.read(p, dtype="int16")[0]) for a, p in zip(waves, again.audio)), "same seed"
    other = runner.run(Request("text-to-audio", text="a chirp", seconds=0.6, seed=6))
    assert not np.array_equal(waves[0], sf.read(other.audio[0], dtype="int16")[0])
    assert runner.run(Request("text-to-audio", text="a chirp", seconds=0.6)).seed >= 0  # -1 draws one

    video = runner.run(Request("video-to-audio", video=str(inputs / "clip.mp4"), seconds=1.0, seed=1, candidates=2))
    assert len(video.videos) == 2
    with av.open(str(video.videos[1])) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(video.videos[1])) as container:
        assert len(container.streams.audio) == 1
    assert frames == 10  # the 2 s video's frames over the 1 s of audio, at 10 fps

    with pytest.raises(RequestError, match="decoding must be one of autoregressive"):
        runner.run(Request("text-to-audio", text="a chirp", decoding="masked"))  # the tiny model has no masked decoder

    cancel, fractions = threading.Event(), []

    def progress(fraction: float, what: str) -> None:
        fractions.append(fraction)
        if len(fractions) == 5:
            cancel.set()

    folders = set((tmp_path / "work").iterdir())
    with pytest.raises(Cancelled):
        runner.run(Request("text-to-audio", text="a chirp", seconds=2.0, seed=1), progress=progress, cancel=cancel)
    assert len(fractions) == 5 and fractions == sorted(fractions) and 0 < fractions[-1] < 0.2
    assert set((tmp_path / "work").iterdir()) == folders, "the cancelled request's folder is removed"
    assert runner.run(Request("text-to-audio", text="a chirp", seconds=0.3, seed=1)).audio  # the lock was released


# ---- the browser --------------------------------------------------------------------------------------------------
FIND_MEDIA = """(selector) => {
  const found = [];
  const walk = (root) => root.querySelectorAll('*').forEach((el) => {
    if ((el.tagName === 'AUDIO' || el.tagName === 'VIDEO') && el.src && el.readyState >= 1) found.push(el.duration);
    if (el.shadowRoot) walk(el.shadowRoot);
  });
  const root = document.querySelector(selector);
  if (root) walk(root);
  return found;
}"""


def open_tab(page, task: str) -> None:
    title = task_title(task)
    tab = page.get_by_role("tab", name=title, exact=True)
    if tab.count() == 0:  # tabs that do not fit the width sit in the "More tabs" menu
        page.get_by_label("More tabs").click()
        page.locator(".overflow-dropdown").get_by_role("button", name=title, exact=True).click()
    else:
        tab.click()
    page.wait_for_selector(f"#{task}-generate", state="visible")


def media_durations(page, selector: str, count: int = 1, timeout: float = 60.0) -> list[float]:
    """The durations of the loaded audio/video elements under `selector` (Gradio's player keeps its element in a
    shadow root), once `count` of them have loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        durations = page.evaluate(FIND_MEDIA, selector)
        if len(durations) >= count:
            return durations
        time.sleep(0.2)
    raise AssertionError(f"no loaded media element under {selector} after {timeout} s")


def set_number(page, selector: str, value) -> None:
    """Types `value` into a Gradio number or slider box, again if the page was still settling (an accordion that
    just opened re-renders its fields), until it holds."""
    field = page.locator(f"{selector} input[type=number]")
    field.wait_for(state="visible")
    for _ in range(10):
        field.fill(str(value))
        field.press("Enter")
        time.sleep(0.3)
        if float(field.input_value()) == float(value):
            return
    raise AssertionError(f"{selector} does not take {value}: it shows {field.input_value()}")


def test_browser_runs_the_tasks_and_shows_errors(server, inputs):
    from playwright.sync_api import sync_playwright

    executable = chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []

    def route(request_route):
        url = request_route.request.url
        if url.split("://", 1)[0] in ("http", "https", "ws", "wss") and httpx.URL(url).host not in LOCAL_HOSTS:
            outside.append(url)
            return request_route.abort()
        return request_route.continue_()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.route("**/*", route)
            page.goto(server["url"])
            page.wait_for_selector("#text-to-audio-generate")
            for task in TASKS:  # a tab per task, each one's screenshot
                open_tab(page, task)
                page.screenshot(path=str(ARTIFACTS / f"tab-{task}.png"), full_page=True)

            # video-to-audio: upload, 1.5 s; the player's audio lasts 1.5 s and the MP4 has an audio stream
            open_tab(page, "video-to-audio")
            page.locator("#video-to-audio-video input[type=file]").set_input_files(str(inputs / "clip.mp4"))
            set_number(page, "#video-to-audio-seconds", 1.5)
            page.click("#video-to-audio-generate")
            assert media_durations(page, "#video-to-audio-out-1")[0] == pytest.approx(1.5, abs=0.01)
            src = page.locator("#video-to-audio-out-video video").get_attribute("src")
            mp4 = page.request.get(src)
            assert mp4.ok, mp4.status
            (ARTIFACTS / "video-to-audio.mp4").write_bytes(mp4.body())
            with av.open(str(ARTIFACTS / "video-to-audio.mp4")) as container:
                assert len(container.streams.audio) == 1 and len(container.streams.video) == 1
                assert float(container.streams.audio[0].duration * container.streams.audio[0].time_base) == \
                    pytest.approx(1.5, abs=0.05)  # fmt: skip
            page.screenshot(path=str(ARTIFACTS / "video-to-audio-result.png"), full_page=True)

            # text-to-audio, 2 candidates of 1.2 s: two players, and the seed asked is the seed shown
            open_tab(page, "text-to-audio")
            page.fill("#text-to-audio-text textarea", "a high beep then a chirp")
            set_number(page, "#text-to-audio-seconds", 1.2)
            page.locator("#text-to-audio-settings").get_by_text("Settings").click()
            set_number(page, "#text-to-audio-candidates", 2)
            set_number(page, "#text-to-audio-seed", 42)
            assert page.locator("#text-to-audio-candidates input[type=number]").input_value() == "2"
            page.click("#text-to-audio-generate")
            summary = page.locator("#text-to-audio-summary textarea")
            page.wait_for_function("(el) => el.value.includes('2 candidates')", arg=summary.element_handle(),
                                   timeout=60000)  # fmt: skip
            first = media_durations(page, "#text-to-audio-out-1")
            second = media_durations(page, "#text-to-audio-out-2")
            assert first[0] == pytest.approx(1.2, abs=0.01) and second[0] == pytest.approx(1.2, abs=0.01)
            assert page.locator("#text-to-audio-seed-used input").input_value() == "42"
            page.screenshot(path=str(ARTIFACTS / "text-to-audio-result.png"), full_page=True)

            # audio-to-text: a caption appears
            open_tab(page, "audio-to-text")
            page.locator("#audio-to-text-audio input[type=file]").set_input_files(str(inputs / "tone.wav"))
            page.click("#audio-to-text-generate")
            caption = page.locator("#audio-to-text-caption textarea")
            page.wait_for_function("(el) => el.value.length > 0", arg=caption.element_handle(), timeout=60000)
            assert caption.input_value().strip()
            page.screenshot(path=str(ARTIFACTS / "audio-to-text-result.png"), full_page=True)

            # a corrupt video: the processor's error is shown in the page, and the server goes on serving
            open_tab(page, "video-to-audio")
            page.locator("#video-to-audio-video").get_by_label("Clear").click()  # the earlier upload
            page.locator("#video-to-audio-video input[type=file]").set_input_files(str(inputs / "corrupt.mp4"))
            page.click("#video-to-audio-generate")
            error = page.locator(".toast-body", has_text="could not be opened")
            error.first.wait_for(state="visible", timeout=30000)
            assert "corrupt.mp4" in error.first.inner_text()
            page.screenshot(path=str(ARTIFACTS / "corrupt-upload-error.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert outside == [], f"the page asked for non-local addresses: {outside}"
    assert server["process"].poll() is None, "the server stopped"
    assert httpx.get(server["url"], timeout=5).status_code == 200


# ---- files, caps and bad uploads ------------------------------------------------------------------------------------
def test_file_routes_serve_nothing_outside_the_apps_folders(server):
    weights = server["model"] / "model.safetensors"
    assert weights.is_file()
    for route in ("/gradio_api/file=", "/file="):
        for path in ("/etc/passwd", str(weights), f"{server['model']}/config.json", "https://example.com/x.png"):
            answer = httpx.get(f"{server['url']}{route}{path}", timeout=10)
            assert answer.status_code in (403, 404), (route, path, answer.status_code)
            assert "root:" not in answer.text


def client(server, folder: Path):
    from gradio_client import Client

    return Client(server["url"], download_files=str(folder), verbose=False)


def test_caps_and_bad_uploads_give_readable_errors(server, inputs, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    too_big = tmp_path / "big.wav"
    sf.write(too_big, np.random.default_rng(0).uniform(-0.5, 0.5, 48000 * 12).astype(np.float32), 48000)
    assert too_big.stat().st_size > MAX_UPLOAD_MB * 2**20
    with too_big.open("rb") as handle:  # the server's own check, whatever the client
        answer = httpx.post(f"{server['url']}/gradio_api/upload", files={"files": handle}, timeout=30)
    assert answer.status_code == 413 and "size" in answer.text.lower(), (answer.status_code, answer.text)

    app = client(server, tmp_path / "downloads")
    caption = {"seed": 1, "candidates": 1, "temperature": 0.0, "top_k": 0, "max_new_tokens": 4,
               "api_name": "/audio_to_text"}  # fmt: skip
    cases = [
        (dict(audio=handle_file(str(inputs / "silent.wav")), **caption), "silent"),
        (dict(audio=handle_file(str(inputs / "long.wav")), **caption), f"up to {MAX_INPUT_SECONDS} s"),
        (dict(text="a beep", seconds=MAX_SECONDS + 1, api_name="/text_to_audio"),
         f"greater than maximum value {MAX_SECONDS}"),  # the slider's own check
        (dict(text="   ", seconds=1.0, api_name="/text_to_audio"), "text prompt is empty"),
        (dict(text="a beep", candidates=2, temperature=0.0, seconds=1.0, api_name="/text_to_audio"), "greedy"),
        (dict(text="a beep", negative_prompt="noise", seconds=1.0, api_name="/text_to_audio"), "guidance"),
        (dict(video=handle_file(str(inputs / "corrupt.mp4")), audio_prompt=None, seconds=1.0,
              api_name="/video_to_audio"),
         "could not be opened"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(AppError, match=message):
            app.predict(**kwargs)
    result = app.predict(text="a beep", seconds=0.5, seed=3, api_name="/text_to_audio")  # still serving
    assert result[-2] == 3


# ---- load -----------------------------------------------------------------------------------------------------------
def _batch(app, requests: list[tuple[int, float]]) -> tuple[list, list[float]]:
    """Submits the (seed, seconds) text-to-audio requests at once; returns their results in order and the seconds
    from the submission to each one's end."""
    start = time.perf_counter()
    jobs = [app.submit(text="a noise burst, then a chirp", seconds=seconds, seed=seed, candidates=1,
                       api_name="/text_to_audio") for seed, seconds in requests]  # fmt: skip
    latencies: list[float | None] = [None] * len(jobs)
    while None in latencies:
        assert time.perf_counter() - start < 600, "the batch did not finish within 600 s"
        for i, job in enumerate(jobs):
            if latencies[i] is None and job.done():
                latencies[i] = time.perf_counter() - start
        time.sleep(0.02)
    return [job.result() for job in jobs], latencies


def _check(results, requests) -> dict[tuple[int, float], bytes]:
    """Each result is a WAV of its request's length with its request's seed; returns the audio per request."""
    audio = {}
    for (seed, seconds), result in zip(requests, results):
        assert result[-2] == seed, (seed, result[-1])
        assert f"seed {seed} " in result[-1]
        path = result[0]["value"]
        data, rate = sf.read(path, dtype="int16")
        assert len(data) == round(seconds * rate), (seed, seconds, len(data) / rate)
        audio.setdefault((seed, seconds), data.tobytes())
        assert audio[(seed, seconds)] == data.tobytes(), f"two requests with seed {seed} gave different audio"
    return audio


def test_twenty_concurrent_requests_complete_unmixed_and_memory_holds(server, tmp_path):
    app = client(server, tmp_path / "downloads")
    pid = server["process"].pid
    warm = [(7, 0.5), (8, 0.6), (9, 0.7), (10, 0.8)]
    _check(_batch(app, warm)[0], warm)
    # 20 requests, 16 seeds: 4 seeds asked twice with the same length, which must give the same audio.
    requests = [(100 + i % 16, 0.5 + 0.1 * (i % 16 % 4)) for i in range(20)]
    figures = {}
    for name in ("first", "second"):
        results, latencies = _batch(app, requests)
        audio = _check(results, requests)
        assert len(set(audio.values())) == 16, "different seeds gave the same audio"
        figures[name] = {"rss_mb": rss_mb(pid), "p50_s": statistics.median(latencies),
                         "p95_s": float(np.percentile(latencies, 95)), "max_s": max(latencies)}  # fmt: skip
    growth = figures["second"]["rss_mb"] / figures["first"]["rss_mb"] - 1
    figures["rss_growth"] = growth
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("web load (20 concurrent text-to-audio requests, 0.5-0.8 s each):", json.dumps(figures))
    assert abs(growth) <= 0.10, figures


# ---- shutdown (last: it stops the shared server) ---------------------------------------------------------------------
def test_server_stops_on_sigterm_and_leaves_nothing_behind(server):
    process = server["process"]
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0  # SIGTERM stops it as Ctrl-C does: the server closes, `serve` returns
    log = server["log"].read_text()
    # Every bad input above was answered with a readable error, never an exception escaping our code (Gradio logs
    # the tracebacks of its own input checks, e.g. a slider value out of range).
    assert f"{os.sep}c3llm{os.sep}" not in log, log[-3000:]
    assert list(server["cwd"].iterdir()) == []
    # TMPDIR holds nothing of the app; torch makes its (empty) compiler cache folder there when it is imported.
    left = [p for p in server["tmp"].iterdir() if not p.name.startswith("torchinductor_")]
    assert left == [], left
    for cache in server["tmp"].glob("torchinductor_*"):
        assert list(cache.rglob("*")) == [], list(cache.rglob("*"))

"""Video codecs for the annotated output: encoder CPU per frame, file size, and whether Debian's
headless Chromium plays the file, on sample_videos/vtest.avi (795 frames, 768x576, 10 fps).

The writers are the video sink's own (``pipeline/sinks/video.py``), driven from this one thread;
CPU is the process's CPU time (``time.process_time``: any helper thread an encoder starts is
counted), so other load on a shared machine barely moves it, unlike wall time.

    python scripts/bench_codecs.py OUT_DIR      # markdown table on stdout (docs/bench/outputs.md)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.sinks import video as V  # noqa: E402
from pipeline.videoio import opened_video, sample_frames  # noqa: E402

VARIANTS = {  # name -> PyAV (encoder, options); mp4v is OpenCV's
    "mp4v": None,
    "h264 ultrafast crf 23": ("libx264", {"preset": "ultrafast", "crf": "23"}),
    "h264": V.PYAV_CODECS["h264"],
    "h264 superfast crf 26": ("libx264", {"preset": "superfast", "crf": "26"}),
    "h264 ultrafast crf 26": ("libx264", {"preset": "ultrafast", "crf": "26"}),
    "h264 veryfast crf 23": ("libx264", {"preset": "veryfast", "crf": "23"}),
    "vp9": V.PYAV_CODECS["vp9"],
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(ROOT / "sample_videos" / "vtest.avi"))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    rows = []
    for i, (name, pyav) in enumerate(VARIANTS.items()):
        path = out / f"v{i}.mp4"
        if pyav is None:
            writer = V._OpenCvWriter(path, 10.0, (768, 576), name)
        else:
            V.PYAV_CODECS[name] = pyav
            writer = V._PyAvWriter(path, 10.0, (768, 576), name)
        c0, w0 = time.process_time(), time.perf_counter()
        for image in frames:
            writer.write(image)
        writer.close()
        rows.append((name, pyav, time.process_time() - c0, time.perf_counter() - w0, path))
    page = out / "play.html"
    files = [r[4].name for r in rows]
    script = ("const files=FILES, out={}; let left=files.length;"
              "for (const f of files) {const v=document.createElement('video'); v.muted=true; v.preload='auto';"
              "const done=(w)=>{if (out[f]) return; out[f]={w, rs: v.readyState, d: v.duration};"
              "if (--left===0) document.getElementById('r').textContent=JSON.stringify(out);};"
              "v.addEventListener('loadeddata', ()=>done('loaded')); v.addEventListener('error', ()=>done('error'));"
              "v.src=f; document.body.appendChild(v);}").replace("FILES", json.dumps(files))
    page.write_text(f"<!doctype html><body><pre id='r'>pending</pre><script>{script}</script></body>")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    play: dict = {}
    if chromium:
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={out / 'p'}",
                              "--allow-file-access-from-files", "--virtual-time-budget=15000", "--dump-dom",
                              page.as_uri()], capture_output=True, text=True, timeout=120).stdout
        play = json.loads(dom.split('<pre id="r">', 1)[1].split("</pre>", 1)[0])
    print("| output | encoder | encode CPU ms/frame | wall s | size MB | PSNR dB | headless Chromium (Debian) |")
    print("|---|---|---|---|---|---|---|")
    for name, pyav, cpu, wall, path in rows:
        enc = "OpenCV VideoWriter, MPEG-4 Part 2" if pyav is None else f"PyAV {pyav[0]} {pyav[1]}"
        p = play.get(path.name)
        played = ("not run (no chromium)" if p is None else f"plays: readyState {p['rs']}, {p['d']:.1f} s"
                  if p["w"] == "loaded" else "does not play (MEDIA_ERR_SRC_NOT_SUPPORTED)")
        print(f"| {name} | {enc} | {1000 * cpu / len(frames):.2f} | {wall:.1f} | {path.stat().st_size / 1e6:.2f} "
              f"| {psnr(path, frames):.2f} | {played} |")


def psnr(path: Path, frames: list) -> float:
    """Mean PSNR of every 10th frame of the written file against the source frame."""
    with opened_video(path) as cap:
        values = [cv2.PSNR(frames[i], image) for i, image in sample_frames(cap, range(0, len(frames), 10))]
    return sum(values) / max(1, len(values))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-codecs"))

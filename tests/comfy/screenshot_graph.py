"""Screenshot a workflow in ComfyUI's real frontend after running it (for docs/comfyui.md).

Needs a running server (see run_headless.sh), Chromium and the ``playwright`` Python package
(``executable_path`` points at the system Chromium; nothing is downloaded):

    python tests/comfy/screenshot_graph.py http://127.0.0.1:8199 workflows/vpg_demo_side_by_side.json out.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("workflow", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="2200x1000")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    graph = json.loads(args.workflow.read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(args.server, wait_until="networkidle")
        page.wait_for_function("window.app && window.app.graph", timeout=60000)
        page.keyboard.press("Escape")
        page.evaluate("async (g) => { await window.app.loadGraphData(g); }", graph)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        # done when the queue is empty again and the images had time to show
        page.wait_for_timeout(3000)
        page.wait_for_function(
            "fetch('/queue').then(r => r.json()).then(q => !q.queue_running.length && !q.queue_pending.length)",
            timeout=120000,
        )
        page.wait_for_timeout(3000)
        page.keyboard.press("Escape")
        page.screenshot(path=str(args.out))
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()

"""Screenshot a workflow in ComfyUI's real frontend after running it (for docs/comfyui.md).

Needs a running server (see run_headless.sh), Chromium and the ``playwright`` Python package
(``executable_path`` points at the system Chromium; nothing is downloaded):

    python tests/comfy/screenshot_graph.py http://127.0.0.1:8199 workflows/vpg_demo_side_by_side.json out.png

``--crop`` cuts the picture down to the nodes (plus a margin) instead of the whole window; ``--timeout``
is how long the run may take (the tiny InfinityStar video takes about 30 s on a CPU).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

# Screen box of all nodes (title bars and the badges above them included), in CSS pixels.
NODE_BOX = """() => {
    const ds = window.app.canvas.ds, rect = window.app.canvas.canvas.getBoundingClientRect();
    const title = (window.LiteGraph && window.LiteGraph.NODE_TITLE_HEIGHT) || 30;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of window.app.graph._nodes) {
        const [a, b] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - title - 20]);
        const [c, d] = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
        x0 = Math.min(x0, a); y0 = Math.min(y0, b); x1 = Math.max(x1, c); y1 = Math.max(y1, d);
    }
    const dpr = window.devicePixelRatio || 1;
    return [rect.left + x0 / dpr, rect.top + y0 / dpr, rect.left + x1 / dpr, rect.top + y1 / dpr];
}"""

# Move the view so the top-left node sits below the menu bar, at (x, y) CSS pixels of the canvas.
PLACE_GRAPH = """([x, y]) => {
    const ds = window.app.canvas.ds, title = (window.LiteGraph && window.LiteGraph.NODE_TITLE_HEIGHT) || 30;
    const left = Math.min(...window.app.graph._nodes.map(n => n.pos[0]));
    const top = Math.min(...window.app.graph._nodes.map(n => n.pos[1] - title - 20));
    ds.offset[0] = x / ds.scale - left;
    ds.offset[1] = y / ds.scale - top;
    window.app.canvas.setDirty(true, true);
}"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def get_json(server: str, path: str) -> dict:
    with urllib.request.urlopen(f"{server}{path}", timeout=30) as response:
        return json.load(response)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("workflow", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="2200x1000")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--crop", action="store_true", help="only the nodes, not the whole window")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds the run may take")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    graph = json.loads(args.workflow.read_text())
    # a fresh user directory would open the template browser over the graph on the first visit; the minimap
    # would cover the bottom-right corner of a cropped picture
    for setting, value in (("Comfy.TutorialCompleted", b"true"), ("Comfy.Minimap.Visible", b"false")):
        request = urllib.request.Request(f"{args.server}/settings/{setting}", data=value, method="POST")
        urllib.request.urlopen(request, timeout=30).close()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(args.server, wait_until="networkidle")
        page.wait_for_function("window.app && window.app.graph", timeout=60000)
        page.keyboard.press("Escape")
        page.evaluate("async (g) => { await window.app.loadGraphData(g); }", graph)
        if args.crop:
            page.evaluate(PLACE_GRAPH, [20, 110])
        finished = len(get_json(args.server, "/history"))
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        # done when the server's history has one more entry and the queue is empty; then let the outputs show
        deadline = time.monotonic() + args.timeout
        while len(get_json(args.server, "/history")) <= finished or any(get_json(args.server, "/queue").values()):
            if time.monotonic() > deadline:
                raise SystemExit(f"the run did not finish within {args.timeout} s")
            page.wait_for_timeout(1000)
        page.wait_for_timeout(3000)
        page.keyboard.press("Escape")
        page.wait_for_timeout(1000)  # let a closing dialog fade out
        clip = None
        if args.crop:
            x0, y0, x1, y1 = page.evaluate(NODE_BOX)
            x0, y0 = max(0.0, x0 - 12), max(0.0, y0 - 12)
            x1, y1 = min(float(width), x1 + 12), min(float(height), y1 + 12)
            clip = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}
        page.screenshot(path=str(args.out), clip=clip)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()

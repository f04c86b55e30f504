"""Run a UI-format workflow on a running ComfyUI through its HTTP API and fetch the images it saved.

    python tests/comfy/submit.py http://127.0.0.1:8199 workflows/vpg_demo_cfg_prefix.json --out out/
    python tests/comfy/submit.py URL WF.json --set 2.classes='"0, 1"'          # override an input (JSON value)
    python tests/comfy/submit.py URL WF.json --set '3={"class_type": ..., "inputs": {...}}'  # replace node 3
    python tests/comfy/submit.py URL WF.json --no-check --expect-error "Value not in list"

The workflow is checked against the server's ``/object_info`` and converted to API format with
``tests/helpers/comfy_workflow.py`` (the frontend does this conversion in the browser). Exit status 0 when the
run succeeded (or failed with the expected message), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # the module alone, no package imports

import comfy_workflow as wf  # noqa: E402


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server")
    ap.add_argument("workflow", type=Path)
    ap.add_argument("--out", type=Path, help="folder for the fetched images")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=JSON",
                    help="override an input (NODE=JSON replaces the node)")
    ap.add_argument("--no-check", action="store_true", help="skip the local check (let the server validate)")
    ap.add_argument("--expect-error", metavar="TEXT", help="succeed only if the run fails with TEXT in the error")
    ap.add_argument("--interrupt-after", type=float, metavar="SECONDS",
                    help="press Cancel (POST /interrupt) after SECONDS; succeed if the run stopped with no output")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    base = args.server.rstrip("/")

    ui = json.loads(args.workflow.read_text())
    defs = wf.defs_from_object_info(json.loads(_get(base + "/object_info")))
    if not args.no_check:
        problems = wf.validate(ui, defs)
        if problems:
            print("workflow does not match the server's node definitions:\n  " + "\n  ".join(problems))
            return 1
    prompt = wf.to_api(ui, defs) if not args.no_check else _convert_unchecked(ui, defs)
    for item in args.set:
        target, value = item.split("=", 1)
        if "." not in target:  # a whole API-format node: swap a node for another type
            prompt[target] = json.loads(value)
            continue
        node, name = target.split(".", 1)
        prompt[node]["inputs"][name] = json.loads(value)

    body = {"prompt": prompt, "client_id": str(uuid.uuid4()), "extra_data": {"extra_pnginfo": {"workflow": ui}}}
    t0 = time.time()
    status, answer = _post(base + "/prompt", body)
    if status != 200:
        text = json.dumps(answer)
        print(f"HTTP {status}: {json.dumps(answer, indent=1)[:3000]}")
        return 0 if args.expect_error and args.expect_error in text else 1
    prompt_id = answer["prompt_id"]
    if args.interrupt_after is not None:
        time.sleep(args.interrupt_after)
        _post(base + "/interrupt", {})
    while True:
        history = json.loads(_get(f"{base}/history/{prompt_id}"))
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"].get("status_str") in ("success", "error"):
                break
        if time.time() - t0 > args.timeout:
            print(f"timed out after {args.timeout:.0f} s")
            return 1
        time.sleep(0.5)
    elapsed = time.time() - t0
    state = entry["status"]["status_str"]
    if args.interrupt_after is not None:
        kinds = [m[0] for m in entry["status"].get("messages", [])]
        images = [i for o in entry["outputs"].values() for i in o.get("images", [])]
        print(f"after Cancel: status {state}, messages {kinds}, {len(images)} images saved, {elapsed:.1f} s")
        return 0 if "execution_interrupted" in kinds and not images else 1
    if state != "success":
        errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
        for e in errors:
            print(f"node {e.get('node_id')} ({e.get('node_type')}) failed: {e.get('exception_type')}: "
                  f"{e.get('exception_message')}")
        text = json.dumps(errors)
        return 0 if args.expect_error and args.expect_error in text else 1
    if args.expect_error:
        print(f"expected an error containing {args.expect_error!r}, but the run succeeded")
        return 1
    print(f"success in {elapsed:.1f} s")
    for node_id, output in entry["outputs"].items():
        images = output.get("images", [])
        if len(images) > 4 and not args.out:
            print(f"  node {node_id}: {len(images)} images, e.g. {images[0]['type']}/{images[0]['filename']}")
            continue
        for image in images:
            query = urllib.parse.urlencode(image)
            data = _get(f"{base}/view?{query}")
            line = f"  node {node_id}: {image['type']}/{image['subfolder']}/{image['filename']} ({len(data)} bytes)"
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / image["filename"]).write_bytes(data)
                line += f" -> {args.out / image['filename']}"
            print(line)
    return 0


def _convert_unchecked(ui: dict, defs: dict) -> dict:
    """API format without the local check (for negative tests the server must reject)."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in wf.FRONTEND_ONLY:
            continue
        named, _ = wf.widget_values(node, defs[node["type"]])
        for sock in node.get("inputs", []):
            if sock.get("link") is not None:
                link = links[sock["link"]]
                named[sock["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": named}
    return prompt


if __name__ == "__main__":
    sys.exit(main())
